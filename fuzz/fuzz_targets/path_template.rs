//! `google.api.http` path templates and request paths.
//!
//! Input: `<template>\n<request path>` (no newline: all template, empty path).
//! The template is parsed; when it parses, the path is matched against it, and
//! its OpenAPI form and its overlap with itself and with the mesh's own
//! templates are computed. The path is also matched against every template the
//! mesh serves, as the router does for each request. No input may panic, and a
//! witness of an overlap must be matched by both templates.
#![no_main]

use std::sync::LazyLock;

use gateway::template::PathTemplate;
use libfuzzer_sys::fuzz_target;

/// The templates the gateway serves, from the descriptors' http rules.
static SERVED: LazyLock<Vec<PathTemplate>> = LazyLock::new(|| {
    let pool = proto::descriptor_pool().expect("the mesh's descriptors load");
    let bindings = gateway::binding::method_bindings(&pool).expect("the mesh's http rules are valid");
    bindings
        .iter()
        .flat_map(|binding| &binding.http)
        .map(|http| PathTemplate::parse(&http.path).expect("the mesh's templates parse"))
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let (template_bytes, path_bytes) = match data.iter().position(|&b| b == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &[][..]),
    };
    // A request path reaches the router as text (http::Uri is ASCII); keep
    // invalid UTF-8 in play for the template as parse takes any &str.
    let path = String::from_utf8_lossy(path_bytes);
    for served in SERVED.iter() {
        check_match(served, &path);
    }

    let Ok(text) = std::str::from_utf8(template_bytes) else { return };
    let Ok(template) = PathTemplate::parse(text) else { return };
    check_match(&template, &path);
    let _ = template.openapi_path();
    let _ = template.variables();
    let _ = template.verb();
    check_overlap(&template, &template);
    for served in SERVED.iter() {
        check_overlap(&template, served);
    }
});

fn check_match(template: &PathTemplate, path: &str) {
    let matched = template.matches(path);
    assert_eq!(matched.is_some(), template.is_match(path), "matches and is_match disagree on {template} vs {path:?}");
    if let Some(Ok(bindings)) = matched {
        assert_eq!(bindings.len(), template.variables().len(), "{template} vs {path:?}: a binding per variable");
    }
}

fn check_overlap(a: &PathTemplate, b: &PathTemplate) {
    if let Some(witness) = a.overlap_witness(b) {
        assert!(a.is_match(&witness) && b.is_match(&witness), "{a} and {b}: witness {witness:?} does not match both");
    }
}
