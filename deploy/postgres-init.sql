-- Each service keeps its own database; none reads another's tables.
CREATE DATABASE disputes;
CREATE DATABASE labels;
CREATE DATABASE refunds;
