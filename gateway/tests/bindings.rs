//! Every RPC's http rule and access option, read from the descriptor set at run
//! time as the gateway reads them; and the check that refuses an RPC without.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;

use gateway::binding::{BindingError, HttpBinding, MethodBinding, method_bindings};
use prost_reflect::DescriptorPool;

fn find<'a>(bindings: &'a [MethodBinding], full_name: &str) -> &'a MethodBinding {
    bindings.iter().find(|b| b.method.full_name() == full_name).unwrap_or_else(|| panic!("{full_name} has bindings"))
}

fn binding(verb: &str, path: &str, body: &str, response_body: &str) -> HttpBinding {
    HttpBinding { verb: verb.into(), path: path.into(), body: body.into(), response_body: response_body.into() }
}

#[test]
fn every_rpc_of_every_commerce_service_has_an_http_rule_and_an_access_rule() {
    let pool = proto::descriptor_pool().expect("the embedded descriptor set decodes");
    let bindings = method_bindings(&pool).unwrap_or_else(|errors| panic!("{errors}"));

    // Every method of the four services is there, none left out.
    let mut expected = 0;
    for service in proto::COMMERCE_SERVICES {
        let descriptor = pool.get_service_by_name(service).unwrap_or_else(|| panic!("{service} is described"));
        for method in descriptor.methods() {
            expected += 1;
            let found = find(&bindings, method.full_name());
            assert!(!found.http.is_empty(), "{} has a binding", method.full_name());
            assert!(!found.scopes.is_empty(), "{} names scopes", method.full_name());
        }
    }
    // And the operators' dead-letter services: list, replay, discard each, operators' scopes only.
    let mut dead_letter_rpcs = 0;
    for service in proto::DEAD_LETTER_SERVICES {
        let descriptor = pool.get_service_by_name(service).unwrap_or_else(|| panic!("{service} is described"));
        for method in descriptor.methods() {
            dead_letter_rpcs += 1;
            let found = find(&bindings, method.full_name());
            assert!(!found.http.is_empty(), "{} has a binding", method.full_name());
            let scope = if method.name() == "ListDeadLetters" { "ops:read" } else { "ops:write" };
            assert_eq!(found.scopes, [scope], "{}", method.full_name());
        }
    }
    assert_eq!(dead_letter_rpcs, 6);
    assert_eq!(bindings.len(), expected + dead_letter_rpcs);
    assert_eq!(expected, 22, "9 fulfillment + 6 identity + 5 catalog + 2 purchases RPCs");
}

#[test]
fn rules_are_read_with_their_verbs_bodies_and_additional_bindings() {
    let pool = proto::descriptor_pool().expect("descriptors");
    let bindings = method_bindings(&pool).expect("valid");

    let fulfill = find(&bindings, "commerce.fulfillment.v1.FulfillmentService.FulfillOrder");
    assert_eq!(fulfill.http, vec![binding("POST", "/v1/orders/{order_number}:fulfill", "*", "")]);
    assert_eq!(fulfill.scopes, ["fulfillment:write"]);

    let record = find(&bindings, "commerce.purchases.v1.PurchaseHistoryService.RecordPurchase");
    assert_eq!(record.http, vec![binding("POST", "/v1/purchases", "purchase", ""), binding("POST", "/buy", "*", "")]);

    let list = find(&bindings, "commerce.purchases.v1.PurchaseHistoryService.ListPurchases");
    assert_eq!(
        list.http,
        vec![binding("GET", "/v1/purchases", "", ""), binding("GET", "/buyList/{username}", "", "purchases")]
    );
    assert_eq!(list.scopes, ["purchases:read"]);

    let retire = find(&bindings, "commerce.identity.v1.CustomerIdentityService.RetireCustomer");
    assert_eq!(retire.scopes, ["identity:retire"]);
}

/// Compiles `source` next to the mesh's own protos, keeping custom options.
fn pool_with(source: &str) -> DescriptorPool {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("extra.proto"), source).expect("write proto");
    let mesh_protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut compiler = protox::Compiler::new([dir.path(), mesh_protos.as_path()]).expect("includes");
    compiler.include_imports(true);
    compiler.open_file("extra.proto").expect("the test proto compiles");
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("decode")
}

const EXTRA: &str = r#"
syntax = "proto3";
package commerce.extra.v1;
import "commerce/auth/v1/auth.proto";
import "google/api/annotations.proto";
message PokeRequest {}
message PokeResponse {}
service ExtraService {
  rpc Bare(PokeRequest) returns (PokeResponse);
  rpc NoAccess(PokeRequest) returns (PokeResponse) {
    option (google.api.http) = {post: "/v1/poke"};
  }
  rpc NoHttp(PokeRequest) returns (PokeResponse) {
    option (commerce.auth.v1.access) = {scopes: ["extra:write"]};
  }
  rpc NoScopes(PokeRequest) returns (PokeResponse) {
    option (google.api.http) = {get: "/v1/poke"};
    option (commerce.auth.v1.access) = {};
  }
  rpc Complete(PokeRequest) returns (PokeResponse) {
    option (google.api.http) = {get: "/v1/pokes"};
    option (commerce.auth.v1.access) = {scopes: ["extra:read"]};
  }
}
"#;

#[test]
fn an_rpc_missing_either_option_is_refused_by_name() {
    let errors = method_bindings(&pool_with(EXTRA)).expect_err("incomplete RPCs are refused").0;
    let method = |name: &str| format!("commerce.extra.v1.ExtraService.{name}");
    assert_eq!(
        errors,
        vec![
            BindingError::MissingHttpRule { method: method("Bare") },
            BindingError::MissingAccessRule { method: method("Bare") },
            BindingError::MissingAccessRule { method: method("NoAccess") },
            BindingError::MissingHttpRule { method: method("NoHttp") },
            BindingError::NoScopes { method: method("NoScopes") },
        ]
    );
}
