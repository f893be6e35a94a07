//! The catalog's per-source transformers (VALIDATE and TRANSFORM) on any payload.
//!
//! The source files in `config/catalog/sources/` are loaded once. Each input
//! becomes one JSON payload, checked and transformed for every source and every
//! event name. Input:
//!
//! - `J` then JSON text: the payload as sent (seeds: the example payloads);
//! - anything else: a payload built with `arbitrary`: one of the example
//!   payloads (or none) as a base, then edits that replace, remove or insert
//!   values anywhere in it. Keys and strings are drawn mostly from a dictionary
//!   of the names and values the source files and examples use, so edits reach
//!   the paths the transformers read rather than keys no file mentions.
//!
//! No payload may panic; a payload that fails VALIDATE must fail TRANSFORM with
//! the same violations, and no step reports more than `MAX_VIOLATIONS` + 1.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use catalog_ingest::domain::EventName;
use catalog_ingest::transform::{MAX_DEPTH, MAX_VIOLATIONS, Sources};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};

/// Values built deeper than this become null: past `MAX_DEPTH` every payload is refused alike.
const BUILD_DEPTH: usize = MAX_DEPTH + 8;

struct Catalog {
    sources: Sources,
    examples: Vec<Value>,
    dictionary: Vec<String>,
}

fn sources_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/catalog/sources")
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let dir = sources_dir();
    let sources = Sources::load_dir(&dir).expect("the example source files load");
    let mut dictionary = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the sources directory reads").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            words(&std::fs::read_to_string(&path).expect("a source file reads"), &mut dictionary);
        }
    }
    let mut examples = Vec::new();
    for source in std::fs::read_dir(dir.join("examples")).expect("the examples directory reads").flatten() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(source.path())
            .expect("an examples directory reads")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("an example reads");
            let example: Value = serde_json::from_str(&text).expect("an example is JSON");
            strings(&example, &mut dictionary);
            examples.push(example);
        }
    }
    dictionary.sort();
    dictionary.dedup();
    Catalog { sources, examples, dictionary }
});

/// Quoted strings and identifier-like words of a source file: paths, keys, map entries, formats.
fn words(text: &str, into: &mut Vec<String>) {
    for (i, quoted) in text.split('"').enumerate() {
        if i % 2 == 1 {
            into.push(quoted.to_owned());
        }
    }
    into.extend(
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$'))
            .filter(|w| !w.is_empty())
            .map(str::to_owned),
    );
}

/// Every key and string value of an example payload (iteratively: examples are shallow, but still).
fn strings(value: &Value, into: &mut Vec<String>) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => into.push(s.clone()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                into.extend(map.keys().cloned());
                stack.extend(map.values());
            }
            _ => {}
        }
    }
}

/// A JSON-like value as `arbitrary` builds it.
#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Small(i8),
    Unsigned(u64),
    Float(f64),
    /// Text read as a JSON number when it is one (`1e3`, `-0`, `12.50`), else a string.
    NumberText(Text),
    String(Text),
    Array(Vec<Json>),
    Object(Vec<(Text, Json)>),
}

/// A key or string: mostly one the source files or examples use.
#[derive(Arbitrary, Debug)]
enum Text {
    Known(u16),
    Free(String),
    /// A known word with something after it (`2026-03-02T99`, `usd `).
    KnownThen(u16, String),
}

#[derive(Arbitrary, Debug)]
enum Edit {
    /// Replaces the n-th value (pre-order, the root is 0).
    Replace(u16, Json),
    /// Removes the n-th value from its object or array (the root becomes null).
    Remove(u16),
    /// Inserts into the n-th value when it is an object (under the key) or an array (at the end).
    Insert(u16, Text, Json),
}

#[derive(Arbitrary, Debug)]
struct Payload {
    base: u8,
    edits: Vec<Edit>,
}

impl Text {
    fn build(&self, dictionary: &[String]) -> String {
        let known = |i: &u16| dictionary.get(usize::from(*i) % dictionary.len().max(1)).cloned().unwrap_or_default();
        match self {
            Text::Known(i) => known(i),
            Text::Free(s) => s.clone(),
            Text::KnownThen(i, s) => known(i) + s,
        }
    }
}

impl Json {
    fn build(&self, dictionary: &[String], depth: usize) -> Value {
        if depth > BUILD_DEPTH {
            return Value::Null;
        }
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(n) => Value::from(*n),
            Json::Small(n) => Value::from(*n),
            Json::Unsigned(n) => Value::from(*n),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::NumberText(text) => {
                let text = text.build(dictionary);
                match serde_json::from_str::<Number>(&text) {
                    Ok(number) => Value::Number(number),
                    Err(_) => Value::String(text),
                }
            }
            Json::String(text) => Value::String(text.build(dictionary)),
            Json::Array(items) => Value::Array(items.iter().map(|item| item.build(dictionary, depth + 1)).collect()),
            Json::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| (key.build(dictionary), value.build(dictionary, depth + 1)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

fn count(value: &Value) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        count += 1;
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    count
}

/// Applies `edit` at the `target`-th value under `value` (pre-order); true once applied.
fn apply(value: &mut Value, target: &mut usize, edit: &Edit, dictionary: &[String]) -> bool {
    if *target == 0 {
        match edit {
            Edit::Replace(_, json) => *value = json.build(dictionary, 0),
            Edit::Remove(_) => *value = Value::Null,
            Edit::Insert(_, key, json) => match value {
                Value::Object(map) => {
                    map.insert(key.build(dictionary), json.build(dictionary, 0));
                }
                Value::Array(items) => items.push(json.build(dictionary, 0)),
                other => *other = json.build(dictionary, 0),
            },
        }
        return true;
    }
    *target -= 1;
    let removing = matches!(edit, Edit::Remove(_));
    match value {
        Value::Array(items) => {
            for i in 0..items.len() {
                if *target == 0 && removing {
                    items.remove(i);
                    return true;
                }
                if apply(&mut items[i], target, edit, dictionary) {
                    return true;
                }
            }
        }
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if *target == 0 && removing {
                    map.remove(&key);
                    return true;
                }
                if let Some(child) = map.get_mut(&key)
                    && apply(child, target, edit, dictionary)
                {
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

fn build(data: &[u8], catalog: &Catalog) -> Option<Value> {
    let payload = Payload::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    let dictionary = &catalog.dictionary;
    // One more choice than there are examples: an empty object.
    let base = catalog.examples.get(usize::from(payload.base) % (catalog.examples.len() + 1));
    let mut value = base.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    for edit in &payload.edits {
        let at = match edit {
            Edit::Replace(at, _) | Edit::Remove(at) | Edit::Insert(at, _, _) => usize::from(*at),
        };
        let mut target = at % count(&value);
        apply(&mut value, &mut target, edit, dictionary);
    }
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let catalog = &*CATALOG;
    let payload = match data.split_first() {
        Some((b'J', json)) => match serde_json::from_slice::<Value>(json) {
            Ok(payload) => payload,
            Err(_) => return,
        },
        _ => match build(data, catalog) {
            Some(payload) => payload,
            None => return,
        },
    };
    for name in catalog.sources.names() {
        let Some(source) = catalog.sources.get(name) else { continue };
        for event in EventName::ALL {
            let checked = source.check(event, &payload);
            let transformed = source.transform(event, &payload);
            if let Err(violations) = &checked {
                assert!(violations.len() <= MAX_VIOLATIONS + 1, "{name} {event}: {} violations", violations.len());
                assert_eq!(
                    transformed.as_ref().err(),
                    Some(violations),
                    "{name} {event}: VALIDATE failed, so TRANSFORM must fail alike"
                );
            }
            if let Err(violations) = &transformed {
                assert!(violations.len() <= MAX_VIOLATIONS + 1, "{name} {event}: {} violations", violations.len());
            }
        }
    }
});
