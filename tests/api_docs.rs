//! The documentation is checked against the code it describes:
//! `signet.example.toml` parses and sets exactly the keys `docs/config.md`
//! documents, with the documented defaults; `docs/openapi.json` is
//! self-consistent, and on a real `signet serve` every operation it lists
//! exists, answers only statuses, media types, problem types and shapes the
//! document lists for it, and refuses every role it does not list.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use signet::config::{Config, Overrides};

use common::docs::{default_literal, repo_file, repo_path, settings_rows};
use common::server::SignetServer;

/// The roles of the API, and a certificate of the test CA that maps to none.
const ROLES: [&str; 4] = ["rp", "officer", "auditor", "monitor"];
const UNMAPPED: &str = "stranger";
const PROBLEM: &str = "urn:signet:problem:";
/// Documents every configuration key, in settings tables.
const CONFIG_DOC: &str = "docs/config.md";

fn openapi() -> Value {
    serde_json::from_str(&repo_file("docs/openapi.json")).expect("docs/openapi.json is JSON")
}

// ---- configuration ----

/// Every leaf key of the example, with `[[clients]]` elements written
/// `clients[]` and action names `<name>`, as docs/config.md writes them. An
/// empty array (`key_attestation_roots = []`) is a value, not a table array.
fn example_keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let name = match prefix {
                    "" => k.clone(),
                    "actions" => "actions.<name>".to_string(),
                    p => format!("{p}.{k}"),
                };
                match v {
                    toml::Value::Table(_) => example_keys(v, &name, out),
                    toml::Value::Array(items)
                        if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
                    {
                        for item in items {
                            example_keys(item, &format!("{name}[]"), out);
                        }
                    }
                    _ => {
                        out.insert(name);
                    }
                }
            }
        }
        _ => panic!("{prefix} is not a table"),
    }
}

/// The tables of the example that a documented key names (several for
/// `clients[]` and `actions.<name>`).
fn tables_for<'a>(root: &'a mut toml::Table, key: &str) -> (Vec<&'a mut toml::Table>, String) {
    let parts: Vec<&str> = key.split('.').collect();
    let (leaf, path) = parts.split_last().expect("non-empty key");
    let mut tables = vec![root];
    for part in path {
        let mut next = Vec::new();
        for t in tables {
            if *part == "<name>" {
                next.extend(t.iter_mut().filter_map(|(_, v)| v.as_table_mut()));
            } else if let Some(array) = part.strip_suffix("[]") {
                if let Some(toml::Value::Array(items)) = t.get_mut(array) {
                    next.extend(items.iter_mut().filter_map(toml::Value::as_table_mut));
                }
            } else if let Some(toml::Value::Table(inner)) = t.get_mut(*part) {
                next.push(inner);
            }
        }
        tables = next;
    }
    (tables, leaf.to_string())
}

fn parse_config(text: &str) -> Config {
    Config::parse(
        text,
        &repo_path("signet.example.toml"),
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("signet.example.toml: {e}"))
}

#[test]
fn example_config_parses_and_sets_every_documented_key() {
    let text = repo_file("signet.example.toml");
    let config = parse_config(&text);
    assert_eq!(config.clients.len(), 5);
    assert!(config.keys.certificates_dir.is_some());
    assert!(config.policy.is_some());

    let documented = settings_rows(&repo_file(CONFIG_DOC));
    let doc_keys: BTreeSet<String> = documented.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        doc_keys.len(),
        documented.len(),
        "a key is documented twice"
    );
    let table: toml::Value = toml::from_str(&text).expect("TOML");
    let mut in_example = BTreeSet::new();
    example_keys(&table, "", &mut in_example);
    let missing: Vec<_> = doc_keys.difference(&in_example).collect();
    assert!(
        missing.is_empty(),
        "documented in docs/config.md, not set in signet.example.toml: {missing:?}"
    );
    let undocumented: Vec<_> = in_example.difference(&doc_keys).collect();
    assert!(
        undocumented.is_empty(),
        "set in signet.example.toml, not documented in docs/config.md: {undocumented:?}"
    );
    // Each matcher kind is shown on some rule.
    for matcher in ["spki_sha256", "subject", "san_uri", "san_dns"] {
        assert!(
            in_example.contains(&format!("clients[].{matcher}")),
            "{matcher}"
        );
    }
}

/// Keys the example sets to something other than their default, on purpose.
const NOT_AT_DEFAULT: [&str; 1] = ["tls.crls"];

/// The example shows each documented default (in `[actions.default]` for
/// the action keys), and removing every key of the example that is at its
/// documented default does not change the configuration: the documented
/// defaults are the code's.
#[test]
fn documented_defaults_are_shown_and_are_the_code_defaults() {
    let text = repo_file("signet.example.toml");
    let mut table: toml::Table = toml::from_str(&text).expect("TOML");
    let mut removed = Vec::new();
    for (key, default) in settings_rows(&repo_file(CONFIG_DOC)) {
        let Some(default) = default_literal(&default) else {
            continue;
        };
        if !NOT_AT_DEFAULT.contains(&key.as_str()) {
            let (tables, leaf) = tables_for(&mut table, &key.replace("<name>", "default"));
            let shown = tables.first().and_then(|t| t.get(&leaf)).cloned();
            assert_eq!(
                shown,
                Some(default.clone()),
                "signet.example.toml does not show the documented default of {key}"
            );
        }
        let (tables, leaf) = tables_for(&mut table, &key);
        for t in tables {
            if t.get(&leaf) == Some(&default) {
                t.remove(&leaf);
                removed.push(key.clone());
            }
        }
    }
    assert!(!removed.is_empty());
    let stripped = toml::to_string(&table).expect("serialize");
    let full = parse_config(&text);
    let mut defaulted = parse_config(&stripped);
    // An absent rp.algorithms means the engine's list, documented as the default.
    if defaulted.rp.algorithms.is_empty() {
        defaulted.rp.algorithms = signet::webauthn::RelyingParty::new("x", Vec::new()).algorithms;
    }
    assert_eq!(
        format!("{full:?}"),
        format!("{defaulted:?}"),
        "keys set to their documented default changed the configuration; removed: {removed:?}"
    );
}

// ---- OpenAPI document ----

fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {r}"));
            resolve(doc, target)
        }
        None => value,
    }
}

fn all_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| all_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

/// (path, method, operation) for every operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((path.clone(), method.clone(), op.clone()));
        }
    }
    out
}

fn roles_of(op: &Value) -> Vec<String> {
    op["x-signet-roles"]
        .as_array()
        .expect("x-signet-roles")
        .iter()
        .map(|r| r.as_str().expect("role name").to_string())
        .collect()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn openapi_document_is_consistent() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["mutualTLS"]["type"],
        "mutualTLS"
    );
    assert_eq!(doc["security"][0]["mutualTLS"], serde_json::json!([]));
    let mut refs = Vec::new();
    all_refs(&doc, &mut refs);
    for r in &refs {
        resolve(&doc, &serde_json::json!({ "$ref": r }));
    }
    // The catalogue of problem types: slug -> status.
    let catalogue: BTreeMap<String, u64> = doc["x-signet-problem-types"]
        .as_array()
        .expect("x-signet-problem-types")
        .iter()
        .map(|p| {
            (
                p["type"].as_str().expect("type").to_string(),
                p["status"].as_u64().expect("status"),
            )
        })
        .collect();
    let readme = repo_file("README.md");
    for t in catalogue.keys() {
        let slug = t.strip_prefix(PROBLEM).expect("urn");
        assert!(
            readme.contains(&format!("`{slug}`")),
            "README lacks problem type {slug}"
        );
    }
    let ops = operations(&doc);
    assert_eq!(ops.len(), 33);
    for (path, method, op) in &ops {
        let what = format!("{method} {path}");
        let roles = roles_of(op);
        assert!(!roles.is_empty(), "{what}");
        let description = op["description"].as_str().unwrap_or("");
        for role in &roles {
            assert!(ROLES.contains(&role.as_str()), "{what}: role {role}");
            assert!(
                description.contains(&format!("`{role}`")),
                "{what}: description does not name role {role}"
            );
        }
        for (status, response) in op["responses"].as_object().expect("responses") {
            let response = resolve(&doc, response);
            let code: u64 = status.parse().expect("numeric status");
            let types = strs(&response["x-signet-problem-types"]);
            if code >= 400 && !types.is_empty() {
                let content = &response["content"]["application/problem+json"]["schema"];
                assert_eq!(
                    content["$ref"], "#/components/schemas/Problem",
                    "{what} {status}"
                );
                for t in types {
                    assert_eq!(catalogue.get(t), Some(&code), "{what} {status}: {t}");
                }
            }
        }
        let forbidden = strs(&op["responses"]["403"]["x-signet-problem-types"]);
        assert!(
            forbidden.contains(&"urn:signet:problem:forbidden"),
            "{what}: 403 forbidden not listed"
        );
    }
}

/// A small JSON Schema check, enough for the shapes the document uses:
/// `$ref`, `type`, `const`, `enum`, `required`, `properties`,
/// `additionalProperties: false`, `items`, `oneOf`, `minimum`, `maximum`,
/// `minLength`, `maxLength`.
fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(branches) = schema["oneOf"].as_array() {
        let ok = branches
            .iter()
            .filter(|b| check_schema(doc, b, value, at).is_ok())
            .count();
        return if ok == 1 {
            Ok(())
        } else {
            Err(format!("{at}: matches {ok} oneOf branches"))
        };
    }
    let fits = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("schema type {other}"),
    };
    match &schema["type"] {
        Value::String(t) if !fits(t) => return Err(format!("{at}: {value} is not {t}")),
        Value::Array(ts) if !ts.iter().filter_map(Value::as_str).any(fits) => {
            return Err(format!("{at}: {value} is none of {ts:?}"));
        }
        _ => {}
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        return Err(format!("{at}: {value} is not {c}"));
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {e:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            return Err(format!("{at}: {n} below minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            return Err(format!("{at}: {n} above maximum"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m)
            || schema["maxLength"].as_u64().is_some_and(|m| len > m)
        {
            return Err(format!("{at}: length {len} out of bounds"));
        }
    }
    if let Some(obj) = value.as_object() {
        for r in strs(&schema["required"]) {
            if !obj.contains_key(r) {
                return Err(format!("{at}: missing {r}"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check_schema(doc, s, v, &format!("{at}.{k}"))?,
                None if schema["additionalProperties"] == Value::Bool(false) => {
                    return Err(format!("{at}: undocumented member {k}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(s)) = (value.as_array(), schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_schema(doc, s, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

struct Answer {
    status: u16,
    media_type: String,
    text: String,
}

/// Sends `method path`; a POST carries `body` (default `{}`) as
/// application/json.
fn send(
    client: &reqwest::blocking::Client,
    server: &SignetServer,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let method =
        reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("HTTP method");
    let mut request = client.request(method.clone(), server.url(path));
    if method == reqwest::Method::POST {
        let body = body.map_or_else(|| "{}".to_string(), Value::to_string);
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().expect("send");
    let status = response.status().as_u16();
    let media_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = response.text().unwrap_or_default();
    Answer {
        status,
        media_type,
        text,
    }
}

/// Asserts that `answer` is one the document lists for `op`: its status,
/// its media type, a body of the documented schema, and for a problem a
/// documented problem type. Returns the body (JSON, or Null).
fn assert_documented(doc: &Value, op: &Value, answer: &Answer, what: &str) -> Value {
    let body: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
    let status = answer.status.to_string();
    let documented = op["responses"]
        .get(&status)
        .unwrap_or_else(|| panic!("{what}: status {status} is not documented: {}", answer.text));
    let documented = resolve(doc, documented);
    match documented["content"].as_object() {
        None => assert!(answer.text.is_empty(), "{what}: undocumented body"),
        Some(content) => {
            let media = content.get(&answer.media_type).unwrap_or_else(|| {
                panic!(
                    "{what}: media type {} is not documented for {status}",
                    answer.media_type
                )
            });
            if answer.media_type.ends_with("json") {
                assert!(!body.is_null(), "{what}: not JSON: {}", answer.text);
                if let Err(e) = check_schema(doc, &media["schema"], &body, "body") {
                    panic!("{what}: {e}: {body}");
                }
            }
        }
    }
    if answer.media_type == "application/problem+json" {
        let problem_type = body["type"].as_str().unwrap_or("");
        let listed = strs(&documented["x-signet-problem-types"]);
        assert!(
            listed.contains(&problem_type),
            "{what}: {problem_type} is not documented for {status}"
        );
        assert_eq!(body["status"], answer.status, "{what}");
    }
    body
}

#[cfg(feature = "testkit")]
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    doc["paths"][path]
        .get(method)
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
}

/// A well-formed value for a path parameter segment (`{name}`) that names
/// nothing stored, so the operation gets past its input checks to the
/// lookup: a user handle or credential id of 3 bytes, a device or
/// transaction id of 16.
fn path_value(segment: &str) -> Option<&'static str> {
    let name = segment.strip_prefix('{')?.strip_suffix('}')?;
    Some(match name {
        "deviceId" | "transactionId" => "AAAAAAAAAAAAAAAAAAAAAA",
        _ => "AAAA",
    })
}

#[test]
fn every_documented_operation_exists_and_answers_as_documented() {
    let doc = openapi();
    let server = SignetServer::start();
    let clients: BTreeMap<&str, reqwest::blocking::Client> = ROLES
        .iter()
        .chain([&UNMAPPED])
        .map(|r| (*r, server.client(r)))
        .collect();
    let mut allowed_calls = 0;
    for (path, method, op) in operations(&doc) {
        let url_path: String = path
            .split('/')
            .map(|seg| path_value(seg).unwrap_or(seg))
            .collect::<Vec<_>>()
            .join("/");
        let roles = roles_of(&op);
        for (name, client) in &clients {
            let what = format!("{method} {url_path} as {name}");
            let answer = send(client, &server, &method, &url_path, None);
            let body: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
            let problem_type = body["type"].as_str().unwrap_or("");
            assert!(
                !(answer.status == 404 && problem_type == "urn:signet:problem:no-such-route"),
                "{what}: the router has no such route"
            );
            assert_ne!(answer.status, 405, "{what}: {}", answer.text);
            if roles.iter().any(|r| r == name) {
                allowed_calls += 1;
                assert_documented(&doc, &op, &answer, &what);
            } else {
                assert_eq!(answer.status, 403, "{what}: {}", answer.text);
                assert_eq!(problem_type, "urn:signet:problem:forbidden", "{what}");
                assert_eq!(answer.media_type, "application/problem+json", "{what}");
            }
        }
    }
    // Each operation was called at least once by a role it allows.
    assert!(allowed_calls >= 33, "{allowed_calls}");
}

/// Every route the code defines (`.route("PATH", METHOD(handler))` in
/// src/api/routes/), and no other, is an operation of the document: a route
/// added without its contract, or a contract left for a route removed,
/// fails here.
#[test]
fn the_document_lists_exactly_the_routes_the_code_defines() {
    let doc = openapi();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(path, method, _)| (method, path))
        .collect();
    let mut defined = BTreeSet::new();
    let dir = repo_path("src/api/routes");
    for entry in std::fs::read_dir(&dir).expect("routes dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read route module");
        for part in text.split(".route(\"").skip(1) {
            let (route, rest) = part.split_once('"').expect("route path literal");
            let method = rest
                .trim_start_matches([',', ' ', '\n'])
                .split('(')
                .next()
                .expect("method router")
                .trim()
                .to_string();
            assert!(
                ["get", "post", "put", "delete"].contains(&method.as_str()),
                "{}: {route}: one method per .route() call, as the other modules do ({method})",
                path.display()
            );
            defined.insert((method, route.to_string()));
        }
    }
    assert!(defined.len() >= 33, "{defined:?}");
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&defined).collect();
    assert!(
        undocumented.is_empty(),
        "routes without a contract: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

/// `GET /v1/openapi.json` serves the committed document, byte for byte, to
/// `rp` only.
#[test]
fn the_served_document_is_the_committed_one() {
    let server = SignetServer::start();
    let response = server
        .client("rp")
        .get(server.url("/v1/openapi.json"))
        .send()
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(
        response.text().expect("body"),
        repo_file("docs/openapi.json")
    );
    assert_eq!(
        signet::api::routes::openapi::DOCUMENT,
        repo_file("docs/openapi.json")
    );
    for role in ["officer", "auditor", "monitor"] {
        let (status, body) = server.get(role, "/v1/openapi.json");
        assert_eq!(status, 403, "{role}");
        assert_eq!(body["type"], "urn:signet:problem:forbidden", "{role}");
    }
}

/// The success answers of a whole registration, authentication, listing,
/// audit page and deletion, and the refusals on the way, have the
/// documented shapes.
#[cfg(feature = "testkit")]
#[test]
fn a_real_ceremony_answers_as_documented() {
    use serde_json::json;
    use signet::testkit::{Attestation, Ceremony, SoftAuthenticator};
    use signet::webauthn::{CoseAlgorithm, b64url_decode};

    use common::ceremony::challenge_of;
    use common::server::{ORIGIN, RP_ID};

    let doc = openapi();
    let server = SignetServer::start();
    let rp = server.client("rp");
    let call = |role_client: &reqwest::blocking::Client,
                method: &str,
                template: &str,
                path: &str,
                body: Option<&Value>| {
        let answer = send(role_client, &server, method, path, body);
        let what = format!("{method} {path}");
        let value = assert_documented(&doc, operation(&doc, method, template), &answer, &what);
        (answer.status, value)
    };

    let register = "/v1/registrations/options";
    let request = json!({
        "user": {"name": "alice@example.com", "displayName": "Alice"},
        "action": "default",
        "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
        "attestation": "none",
    });
    let (status, options) = call(&rp, "post", register, register, Some(&request));
    assert_eq!(status, 200, "{options}");
    let mut authenticator = SoftAuthenticator::new(CoseAlgorithm::Es256);
    let user_id = options["publicKey"]["user"]["id"]
        .as_str()
        .expect("user id");
    authenticator.user_handle = b64url_decode("user.id", user_id, 64).expect("user id");
    let parts = authenticator.register(
        &Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)),
        &Attestation::None,
    );
    let verify = json!({"ceremonyId": options["ceremonyId"], "credential": parts.to_json()});
    let path = "/v1/registrations/verify";
    let (status, registered) = call(&rp, "post", path, path, Some(&verify));
    assert_eq!(status, 200, "{registered}");
    let (status, _) = call(&rp, "post", path, path, Some(&verify));
    assert_eq!(
        status, 409,
        "the first well-formed verify spends the ceremony"
    );

    // The same name with another user handle conflicts.
    let other = json!({"user": {"name": "alice@example.com", "id": "AAAA"}});
    let (status, body) = call(&rp, "post", register, register, Some(&other));
    assert_eq!((status, body["field"].as_str()), (409, Some("user.id")));

    let path = "/v1/authentications/options";
    let request = json!({"user": {"name": "alice@example.com"}, "userVerification": "required"});
    let (status, options) = call(&rp, "post", path, path, Some(&request));
    assert_eq!(status, 200, "{options}");
    let parts = authenticator.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge_of(&options)));
    let verify = json!({"ceremonyId": options["ceremonyId"], "credential": parts.to_json()});
    let path = "/v1/authentications/verify";
    let (status, authenticated) = call(&rp, "post", path, path, Some(&verify));
    assert_eq!(status, 200, "{authenticated}");
    assert_eq!(authenticated["userId"], registered["userId"]);
    let (status, _) = call(&rp, "post", path, path, Some(&verify));
    assert_eq!(status, 409);

    let user_id = registered["userId"].as_str().expect("userId");
    let (status, listing) = call(
        &rp,
        "get",
        "/v1/users/{userId}/credentials",
        &format!("/v1/users/{user_id}/credentials"),
        None,
    );
    assert_eq!(status, 200, "{listing}");
    assert!(
        listing["credentials"][0]["lastUsedAt"].is_string(),
        "{listing}"
    );

    let (status, page) = call(
        &server.client("auditor"),
        "get",
        "/v1/audit",
        "/v1/audit?from=1&limit=2",
        None,
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["next"], 3, "{page}");

    let credential_id = registered["credentialId"].as_str().expect("credentialId");
    let template = "/v1/credentials/{credentialId}";
    let path = format!("/v1/credentials/{credential_id}");
    let (status, _) = call(&rp, "delete", template, &path, None);
    assert_eq!(status, 204);
    let (status, _) = call(&rp, "delete", template, &path, None);
    assert_eq!(status, 404);
}

/// Device binding over the API: the success answers of the six device
/// operations (a key attestation record and a rejected outcome included),
/// and the refusals on the way (`device-state`, `token-superseded`,
/// `token-consumed`), have the documented shapes.
#[cfg(feature = "testkit")]
#[test]
fn device_binding_answers_as_documented() {
    use std::time::SystemTime;

    use serde_json::json;
    use signet::testkit::android::{SecurityLevelForTests, key_attestation_chain};
    use signet::testkit::device::{SoftDevice, create_passkey};
    use signet::webauthn::{b64url, b64url_decode};

    use common::server::ORIGIN;

    fn bytes(v: &Value) -> Vec<u8> {
        b64url_decode("test", v.as_str().expect("string"), 1 << 20).expect("base64url")
    }

    let dev = SoftDevice::generate();
    let (chain, root) =
        key_attestation_chain(&dev.public, b"challenge", SecurityLevelForTests::StrongBox);
    let roots = tempfile::tempdir().expect("tempdir");
    let root_file = roots.path().join("root.pem");
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &root).expect("pem");
    std::fs::write(&root_file, pem).expect("write root");
    let server = SignetServer::start_with(&format!(
        "[devices]\nkey_attestation_roots = [\"{}\"]\n",
        root_file.display()
    ));
    let doc = openapi();
    let call = |role: &str, method: &str, template: &str, id: &str, body: Option<&Value>| {
        let path = template.replace("{deviceId}", id);
        let answer = send(&server.client(role), &server, method, &path, body);
        let what = format!("{method} {path} as {role}");
        let value = assert_documented(&doc, operation(&doc, method, template), &answer, &what);
        (answer.status, value)
    };
    let pinned = |role: &str| {
        let (_, keys) = server.get("rp", "/v1/keys");
        common::load::active_key(&keys, role)
    };

    // What the app sends back for a token answer: a passkey, signed and sealed.
    let sealed_request = |id: &str, answer: &Value| {
        let did: [u8; 16] = bytes(&json!(id)).try_into().expect("16 bytes");
        let opened = dev
            .open_token(
                &bytes(&answer["token"]["sealed"]),
                &did,
                &pinned("token-signing"),
                "localhost",
                SystemTime::now(),
            )
            .expect("open the token");
        let options = &answer["token"]["publicKey"];
        opened.check_options(options).expect("options");
        let (_, registration) = create_passkey(options, ORIGIN).expect("passkey");
        let sealed = dev
            .seal_request(
                &opened,
                &registration,
                &pinned("token-encryption"),
                SystemTime::now(),
            )
            .expect("seal");
        json!({ "sealed": b64url(&sealed) })
    };

    let mut enrollment = dev.enrollment("device-docs@example.com", json!({"os": "android"}));
    enrollment["keyAttestation"] = json!(chain.iter().map(|c| b64url(c)).collect::<Vec<_>>());
    let (status, device) = call("rp", "post", "/v1/devices", "", Some(&enrollment));
    assert_eq!(status, 201, "{device}");
    assert_eq!(device["keyAttestation"]["security_level"], "strongbox");
    let id = device["deviceId"].as_str().expect("deviceId").to_string();
    let one = "/v1/devices/{deviceId}";
    let verification = "/v1/devices/{deviceId}/verification";
    let token = "/v1/devices/{deviceId}/token";
    let registration = "/v1/devices/{deviceId}/registration";
    let revoke = "/v1/devices/{deviceId}/revoke";

    let (status, shown) = call("auditor", "get", one, &id, None);
    assert_eq!((status, shown["state"].as_str()), (200, Some("pending")));
    let (status, refused) = call("rp", "post", token, &id, None);
    assert_eq!(
        (status, refused["type"].as_str()),
        (409, Some("urn:signet:problem:device-state"))
    );

    let verified = json!({"outcome": "verified", "reference": "KYC-1"});
    let (status, first) = call("rp", "post", verification, &id, Some(&verified));
    assert_eq!(
        (status, first["state"].as_str()),
        (200, Some("token_issued")),
        "{first}"
    );
    let (status, second) = call("rp", "post", token, &id, None);
    assert_eq!(status, 200, "{second}");
    let (status, shown) = call("officer", "get", one, &id, None);
    assert_eq!(
        (status, shown["token"]["usable"].as_bool()),
        (200, Some(true)),
        "{shown}"
    );

    let (status, refused) = call(
        "rp",
        "post",
        registration,
        &id,
        Some(&sealed_request(&id, &first)),
    );
    assert_eq!(
        (status, refused["type"].as_str()),
        (409, Some("urn:signet:problem:token-superseded"))
    );
    let request = sealed_request(&id, &second);
    let (status, bound) = call("rp", "post", registration, &id, Some(&request));
    assert_eq!(
        (status, bound["state"].as_str()),
        (200, Some("bound")),
        "{bound}"
    );
    let (status, refused) = call("rp", "post", registration, &id, Some(&request));
    assert_eq!(
        (status, refused["type"].as_str()),
        (409, Some("urn:signet:problem:token-consumed"))
    );
    let (status, shown) = call("rp", "get", one, &id, None);
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["credentials"][0], bound["credentialId"]);
    assert!(shown["token"]["redeemed"].is_string(), "{shown}");

    let (status, revoked) = call(
        "officer",
        "post",
        revoke,
        &id,
        Some(&json!({"reason": "lost"})),
    );
    assert_eq!(
        (status, revoked["state"].as_str()),
        (200, Some("revoked")),
        "{revoked}"
    );
    let (status, refused) = call("rp", "post", revoke, &id, None);
    assert_eq!(
        (status, refused["type"].as_str()),
        (409, Some("urn:signet:problem:device-state"))
    );
    let user_id = bound["userId"].as_str().expect("userId");
    let answer = send(
        &server.client("rp"),
        &server,
        "get",
        &format!("/v1/users/{user_id}/credentials"),
        None,
    );
    let listing = assert_documented(
        &doc,
        operation(&doc, "get", "/v1/users/{userId}/credentials"),
        &answer,
        "credentials of a bound user",
    );
    assert_eq!(
        listing["credentials"][0]["deviceId"],
        id.as_str(),
        "{listing}"
    );
    assert!(
        listing["credentials"][0]["disabled"].is_string(),
        "{listing}"
    );

    // A rejected outcome answers the device without a token.
    let other = SoftDevice::generate();
    let (status, device) = call(
        "rp",
        "post",
        "/v1/devices",
        "",
        Some(&other.enrollment("rejected@example.com", json!({}))),
    );
    assert_eq!(status, 201, "{device}");
    let other_id = device["deviceId"].as_str().expect("deviceId");
    let rejected = json!({"outcome": "rejected"});
    let (status, answer) = call("rp", "post", verification, other_id, Some(&rejected));
    assert_eq!(
        (status, answer["state"].as_str()),
        (200, Some("rejected")),
        "{answer}"
    );
    assert!(answer["token"].is_null(), "{answer}");
}

/// Transaction approval over the API: the success answers of the five
/// transaction operations (a Secure Payment Confirmation creation, an
/// approval after a step-up, a receipt, a cancellation) and the refusals on
/// the way (`step-up-required` at creation and at approval,
/// `payment-mismatch`, `credential-bad-signature`, `transaction-approved`,
/// `transaction-closed`, `transaction-not-approved`, `not-found`,
/// `invalid-request`) have the documented shapes.
#[cfg(feature = "testkit")]
#[test]
fn transaction_approval_answers_as_documented() {
    use serde_json::json;
    use signet::testkit::{AssertionParts, Ceremony, SoftAuthenticator};
    use signet::webauthn::{CoseAlgorithm, b64url, b64url_decode};

    use common::server::{ORIGIN, RP_ID};

    const SHOP: &str = "https://shop.example";
    // Tier 1 and tier 3 by AAGUID, without attestation; payments need tier
    // 3, and tier 1 from 1000 CHF.
    const POLICY: &str = include_str!("data/transaction-policy.toml");

    let files = tempfile::tempdir().expect("tempdir");
    let policy = files.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let server = SignetServer::start_with(&format!(
        "[policy]\nfile = \"{}\"\n\n[transactions]\nverification_log = \"{}\"\n",
        policy.display(),
        files.path().join("verification.jsonl").display()
    ));
    let doc = openapi();
    let call = |role: &str, method: &str, template: &str, id: &str, body: Option<&Value>| {
        let path = template.replace("{transactionId}", id);
        let answer = send(&server.client(role), &server, method, &path, body);
        let what = format!("{method} {path} as {role}");
        let value = assert_documented(&doc, operation(&doc, method, template), &answer, &what);
        (answer.status, value)
    };
    // The AAGUIDs of the policy's tier 1 and tier 3 models.
    const STRONG: [u8; 16] = [
        0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x41, 0x11, 0x81, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
        0x11,
    ];
    const WEAK: [u8; 16] = [
        0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x43, 0x33, 0x83, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
        0x33,
    ];
    let passkey = |aaguid: [u8; 16]| {
        let mut auth = SoftAuthenticator::new(CoseAlgorithm::Es256);
        auth.aaguid = aaguid;
        let (status, answer, auth) = common::ceremony::register(
            &server,
            &json!({"user": {"name": "tx-docs@example.com"}}),
            auth,
        );
        assert_eq!(status, 200, "{answer}");
        auth
    };
    let challenge = |tx: &Value| {
        b64url_decode(
            "challenge",
            tx["challenge"].as_str().expect("challenge"),
            64,
        )
        .expect("challenge")
    };
    let approval = |parts: &AssertionParts| json!({ "credential": parts.to_json() });
    let payment = |amount: &str| {
        json!({
            "user": {"name": "tx-docs@example.com"},
            "details": {
                "type": "payment", "amount": amount, "currency": "CHF",
                "payee": {"name": "ACME AG", "iban": "CH9300762011623852957"}
            }
        })
    };
    let create = "/v1/transactions";
    let one = "/v1/transactions/{transactionId}";
    let approve = "/v1/transactions/{transactionId}/approval";
    let cancel = "/v1/transactions/{transactionId}/cancel";
    let receipt = "/v1/transactions/{transactionId}/receipt";
    let problem = |v: &Value| v["type"].as_str().unwrap_or_default().to_string();

    let mut weak = passkey(WEAK);
    // Only a tier 3 credential: a large payment steps up at creation.
    let (status, step) = call("rp", "post", create, "", Some(&payment("5000.00")));
    assert_eq!(
        (status, problem(&step)),
        (403, format!("{PROBLEM}step-up-required")),
        "{step}"
    );
    assert_eq!(step["tiers"], json!([1]), "{step}");
    let (status, bad) = call(
        "rp",
        "post",
        create,
        "",
        Some(&json!({"user": {"name": "tx-docs@example.com"},
                     "details": {"type": "payment", "amount": 10, "currency": "CHF"}})),
    );
    assert_eq!(
        (status, bad["field"].as_str()),
        (400, Some("details.amount"))
    );
    let (status, missing) = call(
        "rp",
        "post",
        create,
        "",
        Some(&json!({"user": {"name": "nobody"}, "details": {"type": "payment"}})),
    );
    assert_eq!(
        (status, missing["field"].as_str()),
        (404, Some("user.name"))
    );

    // A Secure Payment Confirmation transaction, with a display text.
    let mut body = payment("49.90");
    body["display"] = json!("Pay 49.90 CHF to Shop AG?");
    body["spc"] = json!({
        "topOrigin": SHOP,
        "payeeName": "Shop AG",
        "instrument": {"displayName": "Visa •••• 4242", "icon": "https://bank.example/card.png"}
    });
    let (status, spc) = call("rp", "post", create, "", Some(&body));
    assert_eq!(status, 201, "{spc}");
    assert!(spc["paymentRequest"].is_object(), "{spc}");
    assert_eq!(spc["details"]["display"], "Pay 49.90 CHF to Shop AG?");
    let spc_id = spc["transactionId"].as_str().expect("id").to_string();
    // The shop's page shows another total than the transaction's.
    let mut parts = weak.assert(&Ceremony::new(RP_ID, SHOP, &challenge(&spc)));
    let mut client_data: Value = serde_json::from_str(&parts.client_data_json).expect("cd");
    client_data["type"] = json!("payment.get");
    client_data["payment"] = json!({
        "rpId": RP_ID, "topOrigin": SHOP, "payeeName": "Shop AG",
        "total": {"value": "4990.00", "currency": "CHF"},
        "instrument": {"displayName": "Visa •••• 4242", "icon": "https://bank.example/card.png"}
    });
    parts.client_data_json = client_data.to_string();
    weak.sign_assertion(&mut parts);
    let (status, mismatch) = call("rp", "post", approve, &spc_id, Some(&approval(&parts)));
    assert_eq!(
        (status, problem(&mismatch)),
        (403, format!("{PROBLEM}payment-mismatch")),
        "{mismatch}"
    );
    // A signature that does not verify.
    let mut parts = weak.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&spc)));
    let last = parts.signature.len() - 1;
    parts.signature[last] ^= 1;
    let (status, refused) = call("rp", "post", approve, &spc_id, Some(&approval(&parts)));
    assert_eq!(status, 400, "{refused}");
    let (status, shown) = call("officer", "get", one, &spc_id, None);
    assert_eq!(
        (status, shown["attempts"].as_u64()),
        (200, Some(2)),
        "{shown}"
    );
    let (status, pending) = call("auditor", "get", receipt, &spc_id, None);
    assert_eq!(
        (status, problem(&pending)),
        (409, format!("{PROBLEM}transaction-not-approved"))
    );
    let (status, cancelled) = call(
        "rp",
        "post",
        cancel,
        &spc_id,
        Some(&json!({"reason": "the shop gave up"})),
    );
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    let (status, again) = call("rp", "post", cancel, &spc_id, Some(&Value::Null));
    assert_eq!(
        (status, again["closedReason"].as_str()),
        (200, Some("the shop gave up"))
    );
    let parts = weak.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&spc)));
    let (status, closed) = call("rp", "post", approve, &spc_id, Some(&approval(&parts)));
    assert_eq!(
        (status, problem(&closed)),
        (409, format!("{PROBLEM}transaction-closed"))
    );

    // A large payment: the tier 3 credential steps up, the tier 1 approves.
    let mut strong = passkey(STRONG);
    let (status, tx) = call("rp", "post", create, "", Some(&payment("5000.00")));
    assert_eq!(status, 201, "{tx}");
    assert!(tx.get("paymentRequest").is_none(), "{tx}");
    let id = tx["transactionId"].as_str().expect("id").to_string();
    let parts = weak.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let (status, step) = call("rp", "post", approve, &id, Some(&approval(&parts)));
    assert_eq!(
        (status, problem(&step)),
        (403, format!("{PROBLEM}step-up-required")),
        "{step}"
    );
    assert_eq!(step["credentialId"], b64url(&weak.credential_id), "{step}");
    let parts = strong.assert(&Ceremony::new(RP_ID, ORIGIN, &challenge(&tx)));
    let body = approval(&parts);
    let (status, approved) = call("rp", "post", approve, &id, Some(&body));
    assert_eq!(
        (status, approved["tier"].as_u64()),
        (200, Some(1)),
        "{approved}"
    );
    let (status, replay) = call("rp", "post", approve, &id, Some(&body));
    assert_eq!(
        (status, problem(&replay)),
        (409, format!("{PROBLEM}transaction-approved"))
    );
    let (status, refused) = call("rp", "post", cancel, &id, None);
    assert_eq!(
        (status, problem(&refused)),
        (409, format!("{PROBLEM}transaction-approved"))
    );
    let (status, shown) = call("auditor", "get", receipt, &id, None);
    assert_eq!(
        (status, shown["receipt"].as_str()),
        (200, approved["receipt"].as_str()),
        "{shown}"
    );
    let (status, shown) = call("rp", "get", one, &id, None);
    assert_eq!(
        (status, shown["state"].as_str()),
        (200, Some("approved")),
        "{shown}"
    );
    assert!(shown["approval"]["receiptSha256"].is_string(), "{shown}");

    // Unknown and malformed ids.
    let unknown = b64url(&[7u8; 16]);
    for template in [one, receipt] {
        let (status, missing) = call("auditor", "get", template, &unknown, None);
        assert_eq!(
            (status, missing["field"].as_str()),
            (404, Some("transactionId"))
        );
        let (status, bad) = call("auditor", "get", template, "short", None);
        assert_eq!(
            (status, bad["field"].as_str()),
            (400, Some("transactionId"))
        );
    }
    let (status, missing) = call("rp", "post", approve, &unknown, Some(&body));
    assert_eq!(
        (status, missing["field"].as_str()),
        (404, Some("transactionId"))
    );
    let (status, missing) = call("rp", "post", cancel, &unknown, None);
    assert_eq!(
        (status, missing["field"].as_str()),
        (404, Some("transactionId"))
    );
}
