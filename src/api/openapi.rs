//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{events, health, published, sessions, views};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A lockstep API token (lst_…) or an OIDC JWT from a configured issuer",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lockstep", description = "Hardware-rooted credentials that live exactly as long as an approved session."),
    paths(
        sessions::create, sessions::list, sessions::get, sessions::approve, sessions::deny,
        sessions::close, sessions::revoke, sessions::certificate,
        published::token, published::crl, published::ocsp_post, published::ocsp_get,
        published::jwks, published::introspect, published::audit, events::events,
        health::ca, health::healthz, health::readyz,
    ),
    components(schemas(
        ErrorBody, views::NewSessionBody, views::VoteBody, views::RevokeBody, views::CsrBody,
        views::SessionView, views::VoteView, views::SessionList, views::CertificateView, views::Health,
        views::TokenBody, views::TokenView, views::IntrospectionView, published::IntrospectBody,
        events::EventView,
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}
