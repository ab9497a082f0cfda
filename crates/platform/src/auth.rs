//! Bearer-token authentication and role checks, as one tower layer in front of every service.
//!
//! Tokens are HS256 JWTs signed with the suite's shared secret (`RETURNS_AUTH_SECRET`) with
//! claims `sub`, `role`, `carrier` (carrier tokens only) and `exp`. The layer checks the token
//! and the caller's role against the service's [`RoleTable`] before any handler runs, then
//! hands the handler a typed [`Caller`] in the request extensions. Health and reflection stay
//! open so load balancers and `grpcurl`/`buf curl` can look at a service without a token.
//!
//! Checking roles in one table keyed by method path (rather than in each handler) means a new
//! RPC that nobody listed is refused, not silently open. Handlers still check ownership
//! (a buyer's own order), which needs the data.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use returns_domain::dispute::Role;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::config::Secret;
use crate::error::ApiError;

/// Path prefixes served without a token: health checks and reflection.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// The JWT claims the suite issues and accepts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The actor id: a buyer, seller, arbiter, service or carrier integration.
    pub sub: String,
    /// One of `buyer`, `seller`, `arbiter`, `platform`, `carrier`.
    pub role: String,
    /// The carrier code a carrier token acts for; absent for every other role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// The authenticated caller, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub role: Role,
    /// Set for (and only for) carrier callers: the carrier whose labels and locations they reach.
    pub carrier: Option<String>,
}

impl Caller {
    /// The caller of a request that passed the auth layer.
    ///
    /// A missing caller means the service was mounted without the layer: that is a wiring
    /// bug, reported as UNAUTHENTICATED rather than served anonymously.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, ApiError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("no authenticated caller".into()))
    }

    pub fn is(&self, role: Role) -> bool {
        self.role == role
    }

    /// Refuses unless the caller has one of `roles` (for checks finer than the method table).
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "role {} may not do this; allowed: {}",
                self.role.as_str(),
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

/// Signs tokens: used by `returns token`, by tests, and by services calling each other.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer([redacted])")
    }
}

impl TokenIssuer {
    pub fn new(secret: &Secret) -> Self {
        TokenIssuer {
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
        }
    }

    /// A token for `sub` acting as `role`, valid for `ttl` of wall-clock time.
    pub fn issue(
        &self,
        sub: &str,
        role: Role,
        carrier: Option<&str>,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(ApiError::internal)?;
        let claims = Claims {
            sub: sub.to_string(),
            role: role.as_str().to_string(),
            carrier: carrier.map(str::to_string),
            exp: (now + ttl).as_secs(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for expired or malformed ones).
    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .map_err(ApiError::internal)
    }
}

/// Checks tokens. Expiry is wall-clock time, not the (possibly manual) business clock:
/// moving a test clock 30 days ahead must not log everybody out.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier([redacted])")
    }
}

impl TokenVerifier {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        TokenVerifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// The caller named by an `authorization` header value, or why it is refused.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::Unauthenticated("missing `authorization: Bearer <token>` metadata".into())
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::Unauthenticated("authorization must be `Bearer <token>`".into())
            })?;
        let claims = jsonwebtoken::decode::<Claims>(token.trim(), &self.key, &self.validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthenticated("token expired".into())
                }
                _ => ApiError::Unauthenticated(format!("invalid token: {error}")),
            })?
            .claims;
        let role = Role::parse(&claims.role).map_err(|_| {
            ApiError::Unauthenticated(format!("token has unknown role {:?}", claims.role))
        })?;
        if claims.sub.trim().is_empty() {
            return Err(ApiError::Unauthenticated("token has an empty sub".into()));
        }
        let carrier = match (role, claims.carrier) {
            (Role::Carrier, Some(code)) if !code.trim().is_empty() => Some(code),
            (Role::Carrier, _) => {
                return Err(ApiError::Unauthenticated(
                    "a carrier token must name its carrier".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(ApiError::Unauthenticated(
                    "only carrier tokens may carry a carrier claim".into(),
                ));
            }
            (_, None) => None,
        };
        Ok(Caller {
            id: claims.sub,
            role,
            carrier,
        })
    }
}

/// The test clock: only the platform moves it; anyone may read it.
pub fn test_clock_roles() -> RoleTable {
    use returns_proto::service_names::TEST_CLOCK;
    RoleTable::new()
        .allow(TEST_CLOCK, "AdvanceClock", &[Role::Platform])
        .allow(TEST_CLOCK, "Now", Role::ALL)
}

/// The outbox operations service: the platform role only.
pub fn outbox_roles() -> RoleTable {
    use returns_proto::service_names::OUTBOX;
    [
        "ListOutboxMessages",
        "RetryOutboxMessage",
        "DiscardOutboxMessage",
    ]
    .iter()
    .fold(RoleTable::new(), |table, method| {
        table.allow(OUTBOX, method, &[Role::Platform])
    })
}

/// Which roles may call each method of a service, by full gRPC path
/// (`/returns.disputes.v1.DisputeService/RuleOnDispute`). Methods not listed are refused.
#[derive(Debug, Clone, Default)]
pub struct RoleTable {
    methods: HashMap<String, Vec<Role>>,
}

impl RoleTable {
    pub fn new() -> Self {
        RoleTable::default()
    }

    /// Allows `roles` on `service`/`method`.
    pub fn allow(mut self, service: &str, method: &str, roles: &[Role]) -> Self {
        self.methods
            .insert(format!("/{service}/{method}"), roles.to_vec());
        self
    }

    /// Whether some role may call `service`/`method` (a method missing from the table is
    /// refused to everyone, which a contract test catches).
    pub fn covers(&self, service: &str, method: &str) -> bool {
        self.methods
            .get(&format!("/{service}/{method}"))
            .is_some_and(|roles| !roles.is_empty())
    }

    /// Adds every rule of `other` (services mounted together share one layer).
    pub fn merge(mut self, other: &RoleTable) -> Self {
        self.methods.extend(
            other
                .methods
                .iter()
                .map(|(path, roles)| (path.clone(), roles.clone())),
        );
        self
    }

    fn check(&self, path: &str, caller: &Caller) -> Result<(), ApiError> {
        match self.methods.get(path) {
            Some(roles) if roles.contains(&caller.role) => Ok(()),
            Some(roles) => Err(ApiError::PermissionDenied(format!(
                "role {} may not call {path}; allowed: {}",
                caller.role.as_str(),
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Err(ApiError::PermissionDenied(format!(
                "{path} is not open to any role"
            ))),
        }
    }
}

/// The tower layer that authenticates every call except health and reflection.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    roles: Arc<RoleTable>,
}

impl AuthLayer {
    pub fn new(verifier: TokenVerifier, roles: RoleTable) -> Self {
        AuthLayer {
            verifier: Arc::new(verifier),
            roles: Arc::new(roles),
        }
    }

    fn authorize<B>(&self, request: &http::Request<B>) -> Result<Option<Caller>, ApiError> {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            return Ok(None);
        }
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|value| {
                value.to_str().map_err(|_| {
                    ApiError::Unauthenticated("authorization header is not ASCII".into())
                })
            })
            .transpose()?;
        let caller = self.verifier.verify_header(header)?;
        self.roles.check(path, &caller)?;
        Ok(Some(caller))
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match self.layer.authorize(&request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(error) => {
                let status: Status = error.into();
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("test-secret-that-is-long-enough-0123456789")
    }

    fn header(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn a_signed_token_round_trips_to_a_typed_caller() {
        let issuer = TokenIssuer::new(&secret());
        let token = issuer
            .issue(
                "dhl-integration",
                Role::Carrier,
                Some("DHL"),
                Duration::from_secs(60),
            )
            .expect("signed");
        let caller = TokenVerifier::new(&secret())
            .verify_header(Some(&header(&token)))
            .expect("valid");
        assert_eq!(
            caller,
            Caller {
                id: "dhl-integration".into(),
                role: Role::Carrier,
                carrier: Some("DHL".into())
            }
        );
    }

    #[test]
    fn missing_wrongly_signed_and_expired_tokens_are_unauthenticated() {
        let verifier = TokenVerifier::new(&secret());
        let other = TokenIssuer::new(&Secret::new("another-secret-0123456789-abcdefghij"));
        let forged = other
            .issue("b-1", Role::Buyer, None, Duration::from_secs(60))
            .expect("signed");
        let expired = TokenIssuer::new(&secret())
            .sign(&Claims {
                sub: "b-1".into(),
                role: "buyer".into(),
                carrier: None,
                exp: 1_000,
            })
            .expect("signed");
        for header_value in [
            None,
            Some("Basic abc".to_string()),
            Some(header(&forged)),
            Some(header(&expired)),
            Some(header("not.a.jwt")),
        ] {
            let error = verifier
                .verify_header(header_value.as_deref())
                .expect_err("refused");
            assert!(
                matches!(error, ApiError::Unauthenticated(_)),
                "{header_value:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn carrier_claims_are_only_accepted_on_carrier_tokens() {
        let issuer = TokenIssuer::new(&secret());
        let verifier = TokenVerifier::new(&secret());
        let buyer_with_carrier = issuer
            .issue("b-1", Role::Buyer, Some("DHL"), Duration::from_secs(60))
            .expect("signed");
        let carrier_without = issuer
            .issue("c-1", Role::Carrier, None, Duration::from_secs(60))
            .expect("signed");
        assert!(
            verifier
                .verify_header(Some(&header(&buyer_with_carrier)))
                .is_err()
        );
        assert!(
            verifier
                .verify_header(Some(&header(&carrier_without)))
                .is_err()
        );
    }

    #[test]
    fn the_role_table_refuses_unlisted_methods_and_other_roles() {
        let table = RoleTable::new().allow("pkg.Svc", "Rule", &[Role::Arbiter]);
        let buyer = Caller {
            id: "b".into(),
            role: Role::Buyer,
            carrier: None,
        };
        let arbiter = Caller {
            id: "a".into(),
            role: Role::Arbiter,
            carrier: None,
        };
        assert!(table.check("/pkg.Svc/Rule", &arbiter).is_ok());
        assert!(matches!(
            table.check("/pkg.Svc/Rule", &buyer),
            Err(ApiError::PermissionDenied(_))
        ));
        assert!(matches!(
            table.check("/pkg.Svc/Unlisted", &arbiter),
            Err(ApiError::PermissionDenied(_))
        ));
    }
}
