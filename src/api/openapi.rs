//! The OpenAPI document, generated from the handlers' annotations, plus the
//! refusals every operation of a kind shares ([`SharedRefusals`]).

use axum::Json;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{
    connections, events, health, metrics, published, sessions, signals, signing, ssh, views,
};

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

/// Refusals that come from the extractors operations share, not from the
/// handlers, documented here once by rule on every operation they apply to
/// (an operation that documents the status itself keeps its own words):
///
/// - 401 and 503 on every operation that takes a bearer token
///   (`Authenticated`; the caller's refusal or session is looked up in the
///   store);
/// - 400, 413 and 415 on every operation with a JSON or form body
///   (`JsonBody`, `OptionalJsonBody`, the introspection form);
/// - 400 on every operation with query parameters (malformed or unknown
///   ones are refused);
/// - 404 on every operation with a session id in its path (`SessionPath`).
struct SharedRefusals;

impl SharedRefusals {
    fn add(op: &mut Operation, status: &str, description: &str) {
        let error = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", error)
                    .build()
                    .into()
            });
    }

    fn apply(path: &str, op: &mut Operation) {
        if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
            Self::add(op, "401", "Not authenticated");
            Self::add(op, "503", "The store or the key backend is unavailable");
        }
        let form_or_json = op.request_body.as_ref().is_some_and(|b| {
            b.content
                .keys()
                .any(|ct| ct == "application/json" || ct == "application/x-www-form-urlencoded")
        });
        if form_or_json {
            Self::add(op, "400", "Malformed body");
            Self::add(op, "413", "Body over the size limit");
            Self::add(op, "415", "Body of an unsupported content type");
        }
        let params = op.parameters.as_deref().unwrap_or_default();
        if params
            .iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Query))
        {
            Self::add(op, "400", "Malformed or unknown query parameter");
        }
        if path.starts_with("/v1/sessions/{id}") {
            Self::add(op, "404", "No such session you may see");
        }
    }
}

/// The operations of a path item, whatever their method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

impl Modify for SharedRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            for op in operations(item) {
                Self::apply(path, op);
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lockstep", description = "Hardware-rooted credentials that live exactly as long as an approved session.\n\nErrors are `{error, message}` (ErrorBody). Operations with query parameters refuse unknown ones (400 `invalid_request`); operations without query parameters ignore a query string."),
    paths(
        sessions::create, sessions::list, sessions::get, sessions::approve, sessions::deny,
        sessions::close, sessions::revoke, sessions::review, sessions::certificate, connections::report,
        published::token, published::crl, published::ocsp_post, published::ocsp_get,
        published::jwks, published::introspect, published::audit, events::events,
        ssh::certificate, ssh::krl, ssh::ca_pub, signing::signature, signing::tsa_chain,
        health::ca, health::healthz, health::readyz, metrics::metrics, signals::receive, document,
    ),
    components(schemas(
        ErrorBody, views::NewSessionBody, views::VoteBody, views::RevokeBody, views::CsrBody,
        views::SessionView, views::VoteView, views::SessionList, views::CertificateView, views::Health,
        views::TokenBody, views::TokenView, views::IntrospectionView, published::IntrospectBody,
        events::EventView, crate::sessions::ConnectionReport, crate::sessions::ConnectionEnd, crate::sessions::RefusedRequest,
        connections::ReportView, views::SshCertificateBody, views::SshCertificateView,
        views::SignatureBody, views::SignatureView, views::ReviewBody, views::BreakGlassView,
        signals::SetErrorBody,
    )),
    modifiers(&BearerAuth, &SharedRefusals)
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", responses((status = 200,
    description = "The OpenAPI document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    /// The document as JSON, as served.
    fn doc() -> Value {
        serde_json::to_value(super::spec()).unwrap_or_default()
    }

    /// (method, path, operation) of every operation in the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                out.push((method.to_ascii_uppercase(), path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn the_router_serves_exactly_the_documented_operations() {
        let routed: BTreeSet<(String, String)> = super::super::routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        let documented: BTreeSet<(String, String)> = operations(&doc())
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from the document: {undocumented:?}; documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn path_parameters_are_exactly_the_names_in_the_path() {
        for (method, path, op) in operations(&doc()) {
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let declared: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(declared, in_path, "{method} {path}: path parameters");
            for p in &params {
                match p["in"].as_str() {
                    Some("path") => assert_eq!(p["required"], true, "{method} {path}: {p}"),
                    Some("query" | "header") => {
                        assert_ne!(p["required"], true, "{method} {path}: {p}")
                    }
                    other => panic!("{method} {path}: parameter in {other:?}: {p}"),
                }
            }
        }
    }

    #[test]
    fn every_error_response_is_an_error_body() {
        for (method, path, op) in operations(&doc()) {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                // RFC 8935 defines the answer to a refused SET itself.
                let rfc8935 = path == "/v1/signals" && status == "400";
                if (status.starts_with('4') || status.starts_with('5')) && !rfc8935 {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}: {response}"
                    );
                }
            }
        }
    }
}
