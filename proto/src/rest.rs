//! The edge's strict check of REST request bodies.
//!
//! Envoy's gRPC-JSON transcoder drops JSON fields the request message does
//! not define (it has no option to refuse them), so a misspelt
//! `"idempotency_key"` would silently become a request without one. Envoy
//! asks this check first (ext_authz, with the body): the body must be the
//! proto3 JSON of the method's request message, with no unknown field, or the
//! call is refused with the offending field named.
//!
//! Methods are found from the `google.api.http` rules in the descriptor set
//! (resource paths such as `/v1/accounts/{account_id}:deposit`). JSON sent to
//! a gRPC method path (`/bank.v1.Service/Method`) is refused with the REST
//! path to use: the transcoder maps only the annotated paths.

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};

/// A body field the request message refuses, for a `BadRequest` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`money.amount`), or `body` when the body as
    /// a whole is not a JSON object.
    pub field: String,
    pub description: String,
}

struct Binding {
    method: &'static str,
    /// Path segments; `None` is a `{variable}`.
    segments: Vec<Option<String>>,
    verb: Option<String>,
    input: MessageDescriptor,
}

/// Every REST binding of the bank.v1 services.
pub struct RestSchema {
    bindings: Vec<Binding>,
    /// gRPC method path → its REST form (`POST /v1/transfers`).
    grpc_paths: Vec<(String, String)>,
}

impl RestSchema {
    pub fn load() -> Self {
        let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).expect("the build's own descriptor set decodes");
        let http = pool.get_extension_by_name("google.api.http").expect("google/api/annotations.proto is imported");
        let mut bindings = Vec::new();
        let mut grpc_paths = Vec::new();
        for service in pool.services().filter(|s| s.package_name() == "bank.v1") {
            for method in service.methods() {
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http);
                let Some(rule) = rule.as_message() else { continue };
                for verb in ["get", "post", "put", "patch", "delete"] {
                    if let Some(Value::String(template)) = rule.get_field_by_name(verb).as_deref()
                        && !template.is_empty()
                    {
                        grpc_paths.push((grpc_path.clone(), format!("{} {template}", verb.to_uppercase())));
                        bindings.push(Binding::parse(verb, template, method.input()));
                    }
                }
            }
        }
        Self { bindings, grpc_paths }
    }

    /// Checks a request's body against the request message of the method its
    /// HTTP method and path name. A request that names no method passes: it
    /// is not a REST call (the edge routes or refuses it itself).
    pub fn check(&self, http_method: &str, path: &str, body: &[u8]) -> Result<(), FieldError> {
        // The transcoder ignores a trailing slash; so must the lookup.
        let path = path.split('?').next().unwrap_or_default().trim_end_matches('/');
        if let Some((_, rest)) = self.grpc_paths.iter().find(|(p, _)| p == path) {
            return Err(FieldError {
                field: "path".into(),
                description: format!("{path} is the gRPC method; its JSON form is {rest}"),
            });
        }
        let Some(binding) = self.bindings.iter().find(|b| b.matches(http_method, path)) else {
            return Ok(());
        };
        // GET bodies are ignored by the transcoder; query parameters are
        // checked by Envoy itself (unknown ones are refused).
        if binding.method == "get" || body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if let Some(field) = repeated_key(body) {
            return Err(FieldError { field, description: "is given twice; give each field once".into() });
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let mut track = serde_path_to_error::Track::new();
        let result = DynamicMessage::deserialize(
            binding.input.clone(),
            serde_path_to_error::Deserializer::new(&mut de, &mut track),
        )
        .and_then(|m| de.end().map(|()| m));
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let description = describe(&e);
                let mut path = track.path().to_string();
                if path == "." {
                    path.clear();
                }
                // An unknown field fails at its key: the path ends at the
                // message that holds it.
                if let Some(name) =
                    description.strip_prefix("unrecognized field name '").and_then(|r| r.split('\'').next())
                {
                    path = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
                }
                let field = if path.is_empty() { "body".to_string() } else { path };
                Err(FieldError { field, description })
            }
        }
    }
}

impl Binding {
    fn parse(method: &'static str, template: &str, input: MessageDescriptor) -> Self {
        let (path, verb) = split_verb(template);
        let segments = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| if s.starts_with('{') { None } else { Some(s.to_string()) })
            .collect();
        Self { method, segments, verb: verb.map(str::to_string), input }
    }

    fn matches(&self, http_method: &str, path: &str) -> bool {
        if !http_method.eq_ignore_ascii_case(self.method) {
            return false;
        }
        let (path, verb) = split_verb(path);
        if verb != self.verb.as_deref() {
            return false;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        parts.len() == self.segments.len()
            && parts.iter().zip(&self.segments).all(|(part, seg)| match seg {
                Some(literal) => part == literal,
                None => !part.is_empty(),
            })
    }
}

/// `/v1/accounts/{id}:deposit` → (`/v1/accounts/{id}`, `deposit`): the verb
/// follows the last `:` of the last segment.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let last = path.rfind('/').map_or(0, |i| i + 1);
    match path[last..].rfind(':') {
        Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
        None => (path, None),
    }
}

/// The first key an object of `body` gives twice (`money.amount`), either
/// name style counting as the same field: the transcoder keeps the last one
/// silently, so a reader of the first would see another request.
fn repeated_key(body: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::{cell::RefCell, collections::HashSet, fmt};

    struct Keys<'a> {
        path: String,
        found: &'a RefCell<Option<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Keys<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq.next_element_seed(Keys { path: format!("{}[{i}]", self.path), found: self.found })?.is_some() {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
                if !seen.insert(camel(&key)) {
                    *self.found.borrow_mut() = Some(path);
                    return Err(A::Error::custom("repeated key"));
                }
                map.next_value_seed(Keys { path, found: self.found })?;
            }
            Ok(())
        }
    }
    /// `idempotency_key` and `idempotencyKey` name one field.
    fn camel(key: &str) -> String {
        let mut out = String::with_capacity(key.len());
        let mut upper = false;
        for c in key.chars() {
            match c {
                '_' => upper = true,
                c if upper => {
                    out.extend(c.to_uppercase());
                    upper = false;
                }
                c => out.push(c),
            }
        }
        out
    }

    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    // Malformed JSON is the full check's to describe.
    let _ = Keys { path: String::new(), found: &found }.deserialize(&mut de);
    found.into_inner()
}

/// serde's message without its " at line 1 column 42" suffix.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: &str, path: &str, body: &str) -> Result<(), FieldError> {
        RestSchema::load().check(method, path, body.as_bytes())
    }

    #[test]
    fn a_well_formed_body_passes_in_either_json_name_style() {
        let body = r#"{"money":{"currency_code":"USD","amount":"5.00"},"idempotencyKey":"k"}"#;
        assert_eq!(check("POST", "/v1/accounts/0190a0a0-0000-7000-8000-000000000000:deposit", body), Ok(()));
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err =
            check("POST", "/v1/accounts/x:deposit", r#"{"money":{"currency_code":"USD","amout":"5"}}"#).unwrap_err();
        assert_eq!(err.field, "money.amout", "{err:?}");
        assert!(err.description.contains("amout"), "{err:?}");
        let err = check("POST", "/v1/users", r#"{"email":"a@b.c","pasword":"x"}"#).unwrap_err();
        assert_eq!(err.field, "pasword");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let err = check("POST", "/v1/transfers", r#"{"money":{"amount":5}}"#).unwrap_err();
        assert_eq!(err.field, "money.amount");
        let err = check("POST", "/v1/accounts", r#"{"type":"ACCOUNT_TYPE_NOPE"}"#).unwrap_err();
        assert_eq!(err.field, "type");
    }

    #[test]
    fn a_field_given_twice_is_named_whichever_its_name_style() {
        let err = check("POST", "/v1/transfers", r#"{"money":{"amount":"1.00","amount":"900.00"}}"#).unwrap_err();
        assert_eq!(err.field, "money.amount", "{err:?}");
        let err = check("POST", "/v1/transfers", r#"{"idempotency_key":"a","idempotencyKey":"b"}"#).unwrap_err();
        assert_eq!(err.field, "idempotencyKey", "{err:?}");
        assert!(err.description.contains("twice"), "{err:?}");
        // Control: the same key in two different objects is no repetition.
        let body = r#"{"money":{"currency_code":"USD","amount":"5.00"},"idempotencyKey":"k"}"#;
        assert_eq!(check("POST", "/v1/accounts/0190a0a0-0000-7000-8000-000000000000:deposit", body), Ok(()));
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(check("POST", "/v1/transfers", r#"{"money":"#).is_err());
        assert!(check("POST", "/v1/transfers", r#"[1,2]"#).is_err());
        assert!(check("POST", "/v1/transfers", r#"{} trailing"#).is_err());
    }

    #[test]
    fn requests_that_name_no_rest_method_pass_through() {
        assert_eq!(check("GET", "/openapi.json", "whatever"), Ok(()));
        assert_eq!(check("GET", "/v1/accounts/x/balance", ""), Ok(()));
        assert_eq!(check("POST", "/v1/accounts/x:explode", r#"{"x":1}"#), Ok(()));
        assert_eq!(check("POST", "/v1/transfers", ""), Ok(()));
    }

    #[test]
    fn a_trailing_slash_does_not_skip_the_check() {
        assert!(check("POST", "/v1/transfers/", r#"{"amout":1}"#).is_err());
    }

    #[test]
    fn json_on_a_grpc_method_path_names_the_rest_path() {
        let err = check("POST", "/bank.v1.AccountCommandService/Deposit", "{}").unwrap_err();
        assert_eq!(err.field, "path");
        assert!(err.description.contains("POST /v1/accounts/{account_id}:deposit"), "{err:?}");
    }

    #[test]
    fn verbs_split_at_the_last_segment_only() {
        assert_eq!(split_verb("/v1/accounts/{id}:deposit"), ("/v1/accounts/{id}", Some("deposit")));
        assert_eq!(split_verb("/v1/auth:login"), ("/v1/auth", Some("login")));
        assert_eq!(split_verb("/v1/accounts"), ("/v1/accounts", None));
    }
}
