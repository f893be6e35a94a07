//! The OpenAPI document: built from the mesh's descriptors it has an operation
//! for every binding, its references resolve, its path parameters are declared,
//! its schemas follow the proto3 JSON mapping, and openapi-spec-validator
//! accepts it as OpenAPI 3.1.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use gateway::binding::{MethodBinding, method_bindings};
use gateway::openapi::{ApiInfo, document};
use gateway::template::PathTemplate;
use proptest::prelude::*;
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};

fn info() -> ApiInfo {
    ApiInfo { title: "commerce-mesh".into(), version: "1.2.3".into() }
}

fn mesh() -> (Vec<MethodBinding>, Value) {
    let pool = proto::descriptor_pool().expect("the embedded descriptor set decodes");
    let bindings = method_bindings(&pool).unwrap_or_else(|errors| panic!("{errors}"));
    let mut doc = document(&pool, &bindings, &info());
    // As the gateway serves it, with the mesh's webhook beside the bindings.
    gateway::openapi::add_stripe_webhook(&mut doc, gateway::server::STRIPE_WEBHOOK_ROUTE);
    (bindings, doc)
}

/// The operation at `path` and `verb`, with a message naming what is missing.
fn operation<'a>(doc: &'a Value, path: &str, verb: &str) -> &'a Value {
    doc["paths"]
        .get(path)
        .and_then(|item| item.get(verb))
        .unwrap_or_else(|| panic!("{verb} {path} is documented; paths: {:?}", paths(doc)))
}

fn paths(doc: &Value) -> Vec<&String> {
    doc["paths"].as_object().expect("paths is an object").keys().collect()
}

fn parameter<'a>(op: &'a Value, location: &str, name: &str) -> &'a Value {
    op["parameters"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["in"] == location && p["name"] == name))
        .unwrap_or_else(|| panic!("{location} parameter {name} in {}", op["parameters"]))
}

fn parameter_names(op: &Value, location: &str) -> Vec<String> {
    op["parameters"]
        .as_array()
        .map(|all| {
            all.iter().filter(|p| p["in"] == location).map(|p| p["name"].as_str().unwrap().to_string()).collect()
        })
        .unwrap_or_default()
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["components"]["schemas"].get(name).unwrap_or_else(|| panic!("component {name}"))
}

fn reference(name: &str) -> Value {
    json!(format!("#/components/schemas/{name}"))
}

/// Every `$ref` in `value`, with the JSON pointer of where it is.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                if key == "$ref"
                    && let Some(target) = child.as_str()
                {
                    out.push((at.clone(), target));
                } else {
                    refs(child, format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The `{name}`s written in an OpenAPI path, read here independently of the
/// template parser.
fn names_in_path(path: &str) -> Vec<String> {
    path.split('{').skip(1).map(|rest| rest.split('}').next().unwrap_or_default().to_string()).collect()
}

#[test]
fn every_binding_of_every_rpc_is_an_operation_with_its_scopes() {
    let (bindings, doc) = mesh();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "commerce-mesh");
    assert_eq!(doc["info"]["version"], "1.2.3");
    assert!(doc["info"]["description"].as_str().unwrap().contains("lowerCamelCase"));
    assert_eq!(bindings.len(), 28, "22 commerce RPCs and 6 dead-letter RPCs");

    let mut operation_ids = BTreeSet::new();
    let mut operations = 0;
    for binding in &bindings {
        let service = binding.method.parent_service().name();
        for (index, http) in binding.http.iter().enumerate() {
            let path = PathTemplate::parse(&http.path).expect("the mesh's templates parse").openapi_path();
            let op = operation(&doc, &path, &http.verb.to_lowercase());
            operations += 1;
            let expected_id = match index {
                0 => format!("{service}_{}", binding.method.name()),
                n => format!("{service}_{}_{n}", binding.method.name()),
            };
            assert_eq!(op["operationId"], expected_id.as_str());
            assert!(operation_ids.insert(expected_id.clone()), "operationId is unique");
            assert_eq!(op["tags"], json!([service]));
            assert_eq!(op["security"], json!([{"bearer": binding.scopes}]));
            assert_eq!(op["x-required-scopes"], json!(binding.scopes));
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty() && !s.contains('\n')),
                "{expected_id} summary"
            );
            for status in ["default", "400", "401", "403", "404", "409", "429", "503"] {
                assert_eq!(
                    op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                    reference("google.rpc.Status"),
                    "{expected_id} answers {status} with a Status"
                );
            }
            assert!(op["responses"]["200"]["content"].is_object(), "{expected_id} documents its answer");
        }
    }
    let documented: usize =
        doc["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    assert_eq!(documented, operations + 1, "nothing but the bindings (and the Stripe webhook) is documented");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    );
    let tags: Vec<&str> = doc["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        tags,
        [
            "CatalogIngestService",
            "CustomerIdentityService",
            "FulfillmentDeadLetterService",
            "FulfillmentService",
            "PurchaseHistoryDeadLetterService",
            "PurchaseHistoryService"
        ]
    );
}

#[test]
fn the_refund_routes_are_operations_with_their_path_parameters() {
    let (_, doc) = mesh();
    let refund = operation(&doc, "/v1/orders/{order_number}:refund", "post");
    assert_eq!(parameter_names(refund, "path"), ["order_number"]);
    let revoke = operation(&doc, "/v1/fulfillments/{fulfillment_id}:revoke", "post");
    assert_eq!(parameter_names(revoke, "path"), ["fulfillment_id"]);
    let list = operation(&doc, "/v1/purchases", "get");
    assert!(parameter_names(list, "query").contains(&"hide_refunded".to_string()), "the filter is a query parameter");
    let webhook = operation(&doc, "/v1/webhooks/stripe", "post");
    assert_eq!(webhook["security"], json!([]), "signed, not bearer-authenticated");
    assert_eq!(parameter_names(webhook, "header"), ["Stripe-Signature"]);
}

#[test]
fn the_legacy_purchase_paths_keep_their_shapes() {
    let (_, doc) = mesh();
    let purchase = reference("commerce.purchases.v1.Purchase");

    let buy = operation(&doc, "/buy", "post");
    assert_eq!(buy["operationId"], "PurchaseHistoryService_RecordPurchase_1");
    assert_eq!(
        buy["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        reference("commerce.purchases.v1.RecordPurchaseRequest")
    );
    assert_eq!(buy["requestBody"]["required"], true);
    assert!(buy.get("parameters").is_none(), "a `*` body leaves nothing to the query");

    let buy_list = operation(&doc, "/buyList/{username}", "get");
    assert_eq!(buy_list["operationId"], "PurchaseHistoryService_ListPurchases_1");
    let list = &buy_list["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(list["type"], "array", "the legacy list answers the purchases alone");
    assert_eq!(list["items"]["$ref"], purchase);
    let username = parameter(buy_list, "path", "username");
    assert_eq!(username["required"], true);
    assert_eq!(username["schema"], json!({"type": "string"}));
    assert_eq!(parameter_names(buy_list, "query"), ["lms_user_id", "page_size", "page_token", "hide_refunded"]);

    let list = operation(&doc, "/v1/purchases", "get");
    assert_eq!(
        list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        reference("commerce.purchases.v1.ListPurchasesResponse")
    );
    assert_eq!(parameter_names(list, "query"), ["username", "lms_user_id", "page_size", "page_token", "hide_refunded"]);
    assert_eq!(parameter(list, "query", "page_size")["schema"], json!({"type": "integer", "format": "int32"}));
    assert!(
        parameter(list, "query", "username")["description"].as_str().unwrap().contains("oneof `learner`"),
        "oneof members say so"
    );

    // body "purchase": the field is the body; other scalar fields stay query parameters;
    // google.protobuf.Value fields have no text form.
    let record = operation(&doc, "/v1/purchases", "post");
    assert_eq!(record["requestBody"]["content"]["application/json"]["schema"]["$ref"], purchase);
    assert_eq!(parameter_names(record, "query"), ["username", "userid"]);
    assert_eq!(parameter(record, "query", "userid")["schema"], json!({"type": "string", "format": "int64"}));
}

#[test]
fn every_reference_resolves() {
    let (_, doc) = mesh();
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(found.len() > 100, "references are used: {}", found.len());
    for (at, target) in found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("{at}: {target} is local"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {target} resolves");
    }
}

#[test]
fn every_path_variable_is_a_declared_required_path_parameter() {
    let (_, doc) = mesh();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let in_path: BTreeSet<String> = names_in_path(path).into_iter().collect();
        for (verb, op) in item.as_object().unwrap() {
            let declared: BTreeSet<String> = parameter_names(op, "path").into_iter().collect();
            assert_eq!(declared, in_path, "{verb} {path}");
            for name in &declared {
                assert_eq!(parameter(op, "path", name)["required"], true, "{verb} {path} {name}");
            }
        }
    }
    let fulfill = operation(&doc, "/v1/orders/{order_number}:fulfill", "post");
    assert_eq!(parameter_names(fulfill, "path"), ["order_number"]);
}

#[test]
fn a_star_body_leaves_out_the_fields_the_path_sets() {
    let (_, doc) = mesh();
    let fulfill = operation(&doc, "/v1/orders/{order_number}:fulfill", "post");
    let body = &fulfill["requestBody"];
    assert_eq!(body["required"], true);
    let body_schema = &body["content"]["application/json"]["schema"];
    let properties = body_schema["properties"].as_object().expect("a derived schema");
    assert!(!properties.contains_key("order_number"));
    let request = schema(&doc, "commerce.fulfillment.v1.FulfillOrderRequest");
    let all = request["properties"].as_object().unwrap();
    assert!(all.contains_key("order_number"), "the component keeps every field");
    assert_eq!(properties.len(), all.len() - 1);

    // Every field of RetryFulfillmentRequest comes from the path: a body is not required.
    let retry = operation(&doc, "/v1/fulfillments/{fulfillment_id}:retry", "post");
    assert_eq!(retry["requestBody"]["required"], false);
}

#[test]
fn schemas_follow_the_proto3_json_mapping_with_comments() {
    let (_, doc) = mesh();
    let customer = &schema(&doc, "commerce.identity.v1.Customer")["properties"];
    assert_eq!(customer["version"]["type"], "string", "int64 is a string in proto3 JSON");
    assert_eq!(customer["version"]["format"], "int64");
    assert_eq!(customer["retired"]["type"], "boolean");
    assert_eq!(customer["create_time"]["type"], "string");
    assert_eq!(customer["create_time"]["format"], "date-time");
    assert!(customer["lms_user_id"]["description"].as_str().unwrap().starts_with("The LMS user id"));
    assert!(customer.get("lmsUserId").is_none(), "properties are proto field names");

    let ingestion = &schema(&doc, "commerce.catalog.v1.Ingestion")["properties"];
    assert_eq!(ingestion["state"]["$ref"], reference("commerce.catalog.v1.IngestionState"));
    assert_eq!(ingestion["steps"]["type"], "array");
    assert_eq!(ingestion["steps"]["items"]["$ref"], reference("commerce.catalog.v1.StepResult"));
    let state = schema(&doc, "commerce.catalog.v1.IngestionState");
    assert_eq!(state["type"], "string");
    assert_eq!(
        state["enum"],
        json!([
            "INGESTION_STATE_UNSPECIFIED",
            "INGESTION_STATE_APPLIED",
            "INGESTION_STATE_FAILED",
            "INGESTION_STATE_SKIPPED_STALE"
        ])
    );
    assert!(state["description"].as_str().unwrap().contains("- `INGESTION_STATE_APPLIED`: Every step succeeded"));

    let event = &schema(&doc, "commerce.catalog.v1.IngestProductEventRequest")["properties"];
    assert_eq!(event["payload"]["type"], "object", "Struct is an object");
    let legacy = &schema(&doc, "commerce.purchases.v1.RecordPurchaseRequest")["properties"];
    assert!(legacy["price"].get("type").is_none(), "Value is any JSON");
    assert!(legacy["price"]["description"].as_str().unwrap().starts_with("Legacy: the price"));
    let effort = &schema(&doc, "commerce.catalog.v1.Effort")["properties"];
    assert_eq!(
        effort["min_hours_per_week"],
        json!({"type": "integer", "format": "int32", "description": "Fewest hours a week."})
    );

    let lookup = schema(&doc, "commerce.identity.v1.LookupCustomerRequest");
    assert!(
        lookup["description"].as_str().unwrap().contains("Oneof `key`: at most one of `lms_user_id`, `lms_username`")
    );
    // Reached only through other messages, still a component.
    assert!(doc["components"]["schemas"].get("commerce.type.v1.Money").is_some());
    assert!(doc["components"]["schemas"].get("google.protobuf.Timestamp").is_none(), "well-known types are inlined");

    let status = schema(&doc, "google.rpc.Status");
    assert_eq!(status["properties"]["code"]["type"], "integer");
    assert_eq!(status["properties"]["details"]["items"]["required"], json!(["@type"]));

    let ingest = operation(&doc, "/v1/sources/{source}/events", "post");
    assert_eq!(ingest["summary"], "Ingests one event from a source.");
    assert!(ingest["description"].as_str().unwrap().contains("\n\nSteps run in order"), "paragraphs are kept");
}

#[test]
fn the_client_stream_import_takes_newline_delimited_json() {
    let (_, doc) = mesh();
    let import = operation(&doc, "/v1/customers:import", "post");
    let content = import["requestBody"]["content"].as_object().unwrap();
    assert_eq!(content.keys().collect::<Vec<_>>(), ["application/x-ndjson"]);
    assert_eq!(
        content["application/x-ndjson"]["schema"]["$ref"],
        reference("commerce.identity.v1.ImportCustomersRequest")
    );
}

#[test]
fn the_document_is_the_same_on_every_build() {
    let (_, first) = mesh();
    let (_, second) = mesh();
    assert_eq!(serde_json::to_string(&first).unwrap(), serde_json::to_string(&second).unwrap());
}

#[test]
fn openapi_spec_validator_accepts_the_document_as_openapi_3_1() {
    let (_, doc) = mesh();
    let python = std::env::var("MESH_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
    let hint = "run `export MESH_PYTHON=\"$(scripts/python-tools)\"` (it installs openapi-spec-validator in a venv)";
    let probe = Command::new(&python).args(["-c", "import openapi_spec_validator"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "openapi-spec-validator is not importable by {python}: {}\n{hint}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run {python}: {e}\n{hint}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(&python)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1", "--validation-errors", "all"])
        .arg(&file)
        .output()
        .expect("the validator runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- forms the mesh does not use, from a test proto -------------------------

/// Compiles `source` next to the mesh's own protos, keeping options and comments.
fn pool_with(source: &str) -> DescriptorPool {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sample.proto"), source).expect("write proto");
    let mesh_protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut compiler = protox::Compiler::new([dir.path(), mesh_protos.as_path()]).expect("includes");
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("sample.proto").expect("the test proto compiles");
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("decode")
}

fn sample_document(source: &str) -> Value {
    let pool = pool_with(source);
    let bindings = method_bindings(&pool).unwrap_or_else(|errors| panic!("{errors}"));
    document(&pool, &bindings, &info())
}

const SAMPLE: &str = r#"
syntax = "proto3";
package commerce.sample.v1;
import "commerce/auth/v1/auth.proto";
import "google/api/annotations.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// Shelves of books.
service ShelfService {
  // Reads one book. Unknown: NOT_FOUND.
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {get: "/v1/shelves/{shelf.id}/books/{book_id}"};
    option (commerce.auth.v1.access) = {scopes: ["shelf:read"]};
  }
  // Archives a shelf.
  rpc ArchiveShelf(ArchiveShelfRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {
      post: "/v1/shelves/{shelf_id}:archive"
      body: "*"
      additional_bindings {post: "/v1/shelves:archive" body: "*"}
    };
    option (commerce.auth.v1.access) = {scopes: ["shelf:write", "shelf:archive"]};
  }
  // Searches, with a method OpenAPI 3.1 has no field for.
  rpc Search(ArchiveShelfRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = {custom: {kind: "SEARCH" path: "/v1/shelves"}};
    option (commerce.auth.v1.access) = {scopes: ["shelf:read"]};
  }
}

// A place for books.
message Shelf {
  // The shelf's id.
  string id = 1;
  // The shelf this one stands on.
  Shelf parent = 2;
}

enum Genre {
  GENRE_UNSPECIFIED = 0;
  GENRE_POETRY = 1;
}

message GetBookRequest {
  Shelf shelf = 1;
  string book_id = 2;
  repeated string tags = 3;
  Genre genre = 4;
  google.protobuf.Timestamp as_of = 5;
  google.protobuf.Int32Value min_pages = 6;
  google.protobuf.FieldMask read_mask = 7;
  bytes token = 8;
  map<string, int64> counts = 9;
  google.protobuf.Struct filter = 10;
  repeated Shelf others = 11;
  uint64 big = 12;
  google.protobuf.Duration max_age = 13;
  repeated Genre genres = 14;
}

message ArchiveShelfRequest {
  string shelf_id = 1;
  string reason = 2;
}

message Book {
  double rating = 1;
  float weight = 2;
  sint32 pages = 3;
  uint32 copies = 4;
  fixed64 isbn = 5;
  sfixed64 offset = 6;
  google.protobuf.StringValue subtitle = 7;
  google.protobuf.Int64Value sold = 8;
  google.protobuf.BoolValue signed = 9;
  google.protobuf.BytesValue cover = 10;
  map<string, Book> sequels = 11;
  google.protobuf.ListValue notes = 12;
  google.protobuf.Duration loan = 13;
  google.protobuf.Value extra = 14;
  google.protobuf.NullValue nothing = 15;
  optional string edition = 16;
  oneof format {
    string paper = 17;
    string ebook = 18;
  }
}
"#;

#[test]
fn query_parameters_are_the_scalar_leaves_not_bound_elsewhere() {
    let doc = sample_document(SAMPLE);
    let get = operation(&doc, "/v1/shelves/{shelf.id}/books/{book_id}", "get");
    assert_eq!(parameter_names(get, "path"), ["shelf.id", "book_id"]);
    assert_eq!(parameter(get, "path", "shelf.id")["description"], "The shelf's id.");
    // shelf.parent would lead back into Shelf; maps, Struct and repeated messages have no query form.
    assert_eq!(
        parameter_names(get, "query"),
        ["tags", "genre", "as_of", "min_pages", "read_mask", "token", "big", "max_age", "genres"]
    );
    let tags = parameter(get, "query", "tags");
    assert_eq!(tags["schema"], json!({"type": "array", "items": {"type": "string"}}));
    assert_eq!(tags["explode"], true);
    assert_eq!(parameter(get, "query", "genre")["schema"]["$ref"], reference("commerce.sample.v1.Genre"));
    assert_eq!(parameter(get, "query", "genres")["schema"]["items"]["$ref"], reference("commerce.sample.v1.Genre"));
    assert_eq!(parameter(get, "query", "as_of")["schema"], json!({"type": "string", "format": "date-time"}));
    assert_eq!(parameter(get, "query", "min_pages")["schema"], json!({"type": "integer", "format": "int32"}));
    assert_eq!(parameter(get, "query", "read_mask")["schema"]["type"], "string");
    assert_eq!(parameter(get, "query", "token")["schema"], json!({"type": "string", "contentEncoding": "base64"}));
    assert_eq!(parameter(get, "query", "big")["schema"], json!({"type": "string", "format": "uint64"}));
    assert_eq!(parameter(get, "query", "max_age")["schema"]["type"], "string");
    assert_eq!(get["summary"], "Reads one book.");
    assert_eq!(get["description"], "Reads one book. Unknown: NOT_FOUND.");
    assert!(get.get("requestBody").is_none());
}

#[test]
fn well_known_types_wrappers_maps_and_oneofs_take_their_json_forms() {
    let doc = sample_document(SAMPLE);
    let book = &schema(&doc, "commerce.sample.v1.Book")["properties"];
    assert_eq!(book["rating"], json!({"type": "number", "format": "double"}));
    assert_eq!(book["weight"], json!({"type": "number", "format": "float"}));
    assert_eq!(book["pages"], json!({"type": "integer", "format": "int32"}));
    assert_eq!(
        book["copies"],
        json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": 4_294_967_295u32})
    );
    assert_eq!(book["isbn"], json!({"type": "string", "format": "uint64"}));
    assert_eq!(book["offset"], json!({"type": "string", "format": "int64"}));
    assert_eq!(book["subtitle"], json!({"type": ["string", "null"]}));
    assert_eq!(book["sold"], json!({"type": ["string", "null"], "format": "int64"}));
    assert_eq!(book["signed"], json!({"type": ["boolean", "null"]}));
    assert_eq!(book["cover"], json!({"type": ["string", "null"], "contentEncoding": "base64"}));
    assert_eq!(
        book["sequels"],
        json!({"type": "object", "additionalProperties": reference_object("commerce.sample.v1.Book")})
    );
    assert_eq!(book["notes"], json!({"type": "array"}));
    assert_eq!(book["loan"]["type"], "string");
    assert_eq!(book["extra"], json!({}));
    assert_eq!(book["nothing"], json!({"type": "null"}));
    assert_eq!(book["edition"], json!({"type": "string"}), "proto3 optional is no oneof to document");
    assert_eq!(book["paper"]["description"], "Part of oneof `format`: not set together with `ebook`.");
    let description = schema(&doc, "commerce.sample.v1.Book")["description"].as_str().unwrap();
    assert_eq!(description, "Oneof `format`: at most one of `paper`, `ebook` is set.");
    assert!(
        doc["components"]["schemas"].get("commerce.sample.v1.Book.SequelsEntry").is_none(),
        "map entries are inlined"
    );
}

fn reference_object(name: &str) -> Value {
    json!({"$ref": reference(name)})
}

#[test]
fn additional_bindings_get_numbered_ids_and_unknown_methods_are_left_out() {
    let doc = sample_document(SAMPLE);
    let archive = operation(&doc, "/v1/shelves/{shelf_id}:archive", "post");
    assert_eq!(archive["operationId"], "ShelfService_ArchiveShelf");
    assert_eq!(archive["security"], json!([{"bearer": ["shelf:write", "shelf:archive"]}]));
    let body = &archive["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["properties"].as_object().unwrap().keys().collect::<Vec<_>>(), ["reason"]);
    // Empty answers an empty object.
    assert_eq!(archive["responses"]["200"]["content"]["application/json"]["schema"], json!({"type": "object"}));

    let second = operation(&doc, "/v1/shelves:archive", "post");
    assert_eq!(second["operationId"], "ShelfService_ArchiveShelf_1");
    assert_eq!(
        second["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        reference("commerce.sample.v1.ArchiveShelfRequest")
    );
    assert!(doc["paths"].get("/v1/shelves").is_none(), "SEARCH has no OpenAPI 3.1 field");
    assert_eq!(doc["tags"], json!([{"name": "ShelfService", "description": "Shelves of books."}]));
}

#[test]
fn query_parameters_reach_a_bounded_depth_into_nested_messages() {
    // Level0 { Level1 next; string value } ... Level19 { string value }: distinct messages, no cycle.
    let mut source = String::from(
        "syntax = \"proto3\";\npackage commerce.deep.v1;\nimport \"commerce/auth/v1/auth.proto\";\n\
         import \"google/api/annotations.proto\";\n\
         service DeepService {\n  rpc Dive(Level0) returns (Level0) {\n\
         option (google.api.http) = {get: \"/v1/dive\"};\n\
         option (commerce.auth.v1.access) = {scopes: [\"deep:read\"]};\n  }\n}\n",
    );
    for level in 0..20 {
        let next = if level < 19 { format!("Level{} next = 2; ", level + 1) } else { String::new() };
        source.push_str(&format!("message Level{level} {{ string value = 1; {next}}}\n"));
    }
    let doc = sample_document(&source);
    let names = parameter_names(operation(&doc, "/v1/dive", "get"), "query");
    let deepest = names.iter().map(|name| name.split('.').count()).max().unwrap();
    assert_eq!(deepest, 8, "{names:?}");
    assert_eq!(names.len(), 8, "one `value` per level reached: {names:?}");
    // Every level is still a component: the body and answer schemas are not bounded.
    assert!(doc["components"]["schemas"].get("commerce.deep.v1.Level19").is_some());
}

/// A proto scalar type, and the schema proto3 JSON gives it.
fn scalar_types() -> Vec<(&'static str, Value)> {
    vec![
        ("double", json!({"type": "number", "format": "double"})),
        ("float", json!({"type": "number", "format": "float"})),
        ("int32", json!({"type": "integer", "format": "int32"})),
        ("sint32", json!({"type": "integer", "format": "int32"})),
        ("sfixed32", json!({"type": "integer", "format": "int32"})),
        ("uint32", json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": 4_294_967_295u32})),
        ("fixed32", json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": 4_294_967_295u32})),
        ("int64", json!({"type": "string", "format": "int64"})),
        ("sint64", json!({"type": "string", "format": "int64"})),
        ("sfixed64", json!({"type": "string", "format": "int64"})),
        ("uint64", json!({"type": "string", "format": "uint64"})),
        ("fixed64", json!({"type": "string", "format": "uint64"})),
        ("bool", json!({"type": "boolean"})),
        ("string", json!({"type": "string"})),
        ("bytes", json!({"type": "string", "contentEncoding": "base64"})),
        ("google.protobuf.Timestamp", json!({"type": "string", "format": "date-time"})),
    ]
}

/// How a generated field is declared.
#[derive(Clone, Copy, Debug)]
enum Label {
    Singular,
    Repeated,
    Map,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// For any message of scalar fields, singular, repeated or map values: every
    /// field is a property with its type's schema, and on a GET every field
    /// that is not a map is a query parameter of the same type.
    #[test]
    fn every_field_of_a_generated_message_maps_to_its_json_schema(
        fields in prop::collection::vec(
            (0..scalar_types().len(), prop_oneof![Just(Label::Singular), Just(Label::Repeated), Just(Label::Map)]),
            1..12,
        )
    ) {
        let types = scalar_types();
        let mut message = String::new();
        for (number, (type_index, label)) in fields.iter().enumerate() {
            let name = types[*type_index].0;
            let declared = match label {
                Label::Singular => name.to_string(),
                Label::Repeated => format!("repeated {name}"),
                Label::Map => format!("map<string, {name}>"),
            };
            message.push_str(&format!("  {declared} f{number} = {};\n", number + 1));
        }
        let source = format!(
            "syntax = \"proto3\";\npackage commerce.gen.v1;\nimport \"commerce/auth/v1/auth.proto\";\n\
             import \"google/api/annotations.proto\";\nimport \"google/protobuf/timestamp.proto\";\n\
             service GenService {{\n  rpc Get(Generated) returns (Generated) {{\n\
             option (google.api.http) = {{get: \"/v1/generated\"}};\n\
             option (commerce.auth.v1.access) = {{scopes: [\"gen:read\"]}};\n  }}\n}}\n\
             message Generated {{\n{message}}}\n"
        );
        let doc = sample_document(&source);
        let properties = &schema(&doc, "commerce.gen.v1.Generated")["properties"];
        let op = operation(&doc, "/v1/generated", "get");
        let mut expected_query = Vec::new();
        for (number, (type_index, label)) in fields.iter().enumerate() {
            let name = format!("f{number}");
            let scalar = types[*type_index].1.clone();
            let expected = match label {
                Label::Singular => scalar.clone(),
                Label::Repeated => json!({"type": "array", "items": scalar}),
                Label::Map => json!({"type": "object", "additionalProperties": scalar}),
            };
            prop_assert_eq!(&properties[&name], &expected, "{}", name);
            if !matches!(label, Label::Map) {
                prop_assert_eq!(&parameter(op, "query", &name)["schema"], &expected);
                expected_query.push(name);
            }
        }
        prop_assert_eq!(parameter_names(op, "query"), expected_query);
    }
}
