use super::*;

fn template(text: &str) -> PathTemplate {
    PathTemplate::parse(text).unwrap()
}

fn parse_error(text: &str) -> String {
    PathTemplate::parse(text).expect_err(text).reason
}

/// The bindings as `(field, value)` pairs, or `None` when the path does not match.
fn bound(template_text: &str, path: &str) -> Option<Vec<(String, String)>> {
    template(template_text).matches(path).map(|found| found.unwrap().into_iter().map(|b| (b.field, b.value)).collect())
}

fn pairs(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(pairs.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect())
}

#[test]
fn literal_only_template_matches_itself_and_nothing_longer_or_shorter() {
    assert_eq!(bound("/v1/products", "/v1/products"), pairs(&[]));
    assert_eq!(bound("/v1/products", "/v1/products/x"), None);
    assert_eq!(bound("/v1/products", "/v1"), None);
    assert_eq!(bound("/v1/products", "/v1/product"), None);
    assert_eq!(bound("/v1/products", "v1/products"), None);
}

#[test]
fn a_bare_variable_captures_one_decoded_segment() {
    let t = template("/v1/customers/{customer_id}");
    assert_eq!(t.variables(), ["customer_id"]);
    assert_eq!(bound(t.text(), "/v1/customers/c%201"), pairs(&[("customer_id", "c 1")]));
    assert_eq!(bound(t.text(), "/v1/customers/a%2Fb"), pairs(&[("customer_id", "a/b")]));
    assert_eq!(bound(t.text(), "/v1/customers/a/b"), None);
    assert_eq!(bound(t.text(), "/v1/customers"), None);
}

#[test]
fn colons_and_pluses_are_ordinary_without_a_verb() {
    assert_eq!(
        bound("/v1/course-runs/{course_run_key}", "/v1/course-runs/course-v1:edX+DemoX+2024"),
        pairs(&[("course_run_key", "course-v1:edX+DemoX+2024")])
    );
    assert_eq!(
        bound("/v1/course-runs/{course_run_key}", "/v1/course-runs/course-v1%3AedX%2BDemoX%2B2024"),
        pairs(&[("course_run_key", "course-v1:edX+DemoX+2024")])
    );
}

#[test]
fn a_verb_is_split_off_the_last_segment_at_its_last_colon() {
    let t = "/v1/orders/{order_number}:fulfill";
    assert_eq!(bound(t, "/v1/orders/ORD-1:fulfill"), pairs(&[("order_number", "ORD-1")]));
    assert_eq!(bound(t, "/v1/orders/a:b:fulfill"), pairs(&[("order_number", "a:b")]));
    assert_eq!(bound(t, "/v1/orders/ORD-1"), None);
    assert_eq!(bound(t, "/v1/orders/ORD-1:retry"), None);
    assert_eq!(bound(t, "/v1/orders/:fulfill"), None, "the variable needs a non-empty segment");
    // An encoded colon is data, not the verb's separator.
    assert_eq!(bound(t, "/v1/orders/ORD-1%3Afulfill"), None);
    assert_eq!(bound(t, "/v1/orders:fulfill/x"), None);
    assert_eq!(bound("/v1/customers:lookup", "/v1/customers:lookup"), pairs(&[]));
    assert_eq!(bound("/v1/customers:lookup", "/v1/customers/x:lookup"), None);
    assert_eq!(bound("/v1/customers:lookup", "/v1/customers%3Alookup"), None);
}

#[test]
fn verbs_compare_percent_decoded() {
    assert_eq!(bound("/v1/x:batchLookup", "/v1/x:batch%4Cookup"), pairs(&[]));
    assert_eq!(template("/v1/x:batch%4Cookup").verb(), Some("batchLookup"));
}

#[test]
fn literals_compare_percent_decoded() {
    assert_eq!(bound("/v1/products", "/v1/%70roducts"), pairs(&[]));
    assert_eq!(bound("/v1/a%20b", "/v1/a%20b"), pairs(&[]));
    assert_eq!(bound("/v1/a%20b", "/v1/a+b"), None, "'+' is a plus");
    assert_eq!(bound("/v1/a+b", "/v1/a+b"), pairs(&[]));
    assert_eq!(bound("/v1/a%25", "/v1/a%"), None, "a malformed escape matches no literal");
}

#[test]
fn single_star_matches_exactly_one_non_empty_segment() {
    assert_eq!(bound("/v1/*/x", "/v1/a/x"), pairs(&[]));
    assert_eq!(bound("/v1/*/x", "/v1/x"), None);
    assert_eq!(bound("/v1/*/x", "/v1//x"), None);
    assert_eq!(bound("/v1/*/x", "/v1/a/b/x"), None);
}

#[test]
fn double_star_matches_zero_or_more_segments() {
    assert_eq!(bound("/v1/**", "/v1"), pairs(&[]));
    assert_eq!(bound("/v1/**", "/v1/a/b/c"), pairs(&[]));
    assert_eq!(bound("/v1/**", "/v1/a/"), None, "no empty segments");
    assert_eq!(bound("/v1/{rest=**}", "/v1"), pairs(&[("rest", "")]));
    assert_eq!(bound("/{rest=**}", "/"), pairs(&[("rest", "")]));
    assert_eq!(bound("/{rest=**}", "/a/b"), pairs(&[("rest", "a/b")]));
    assert_eq!(bound("/{rest=**}:v", "/:v"), pairs(&[("rest", "")]));
    assert_eq!(bound("/v1/{rest=**}:v", "/v1:v"), pairs(&[("rest", "")]));
    assert_eq!(bound("/v1/{rest=**}:v", "/v1/a/b:v"), pairs(&[("rest", "a/b")]));
}

#[test]
fn a_multi_segment_variable_keeps_encoded_slashes() {
    let t = "/v1/{name=shelves/*/books/**}";
    assert_eq!(bound(t, "/v1/shelves/s1/books/b%2F1/p%202"), pairs(&[("name", "shelves/s1/books/b%2F1/p 2")]));
    assert_eq!(bound(t, "/v1/shelves/s1/books"), pairs(&[("name", "shelves/s1/books")]));
    assert_eq!(bound(t, "/v1/shelves/s1/pens/b1"), None);
    assert_eq!(bound("/v1/{name=a/*}", "/v1/a/x%2fy"), pairs(&[("name", "a/x%2fy")]), "kept as written");
    assert_eq!(bound("/v1/{name=**}", "/v1/x%2Fy"), pairs(&[("name", "x%2Fy")]), "one segment, but may be more");
    assert_eq!(bound("/v1/{name=*}", "/v1/x%2Fy"), pairs(&[("name", "x/y")]));
}

#[test]
fn several_variables_and_dotted_field_paths() {
    let t = template("/v1/{purchase.user}/items/{purchase.id=i/*}:get");
    assert_eq!(t.variables(), ["purchase.user", "purchase.id"]);
    assert_eq!(bound(t.text(), "/v1/ada/items/i/7:get"), pairs(&[("purchase.user", "ada"), ("purchase.id", "i/7")]));
}

#[test]
fn a_variable_of_one_literal_captures_it() {
    assert_eq!(bound("/v1/{kind=books}", "/v1/books"), pairs(&[("kind", "books")]));
    assert_eq!(bound("/v1/{kind=books}", "/v1/pens"), None);
}

#[test]
fn invalid_captured_values_name_their_field() {
    let t = template("/v1/customers/{customer_id}");
    let bad = t.matches("/v1/customers/%FF").unwrap().unwrap_err();
    assert_eq!(bad.field, "customer_id");
    assert!(bad.reason.contains("UTF-8"), "{}", bad.reason);
    let bad = t.matches("/v1/customers/50%").unwrap().unwrap_err();
    assert_eq!(bad.field, "customer_id");
    assert!(bad.reason.contains("percent-escape"), "{}", bad.reason);
    let bad = template("/v1/{name=**}").matches("/v1/a/%C3%2F").unwrap().unwrap_err();
    assert_eq!(bad.field, "name");
    assert!(t.is_match("/v1/customers/%FF"));
}

#[test]
fn anonymous_wildcards_bind_nothing() {
    let t = template("/v1/*/x/**");
    assert!(t.variables().is_empty());
    assert_eq!(bound(t.text(), "/v1/a/x/b/c"), pairs(&[]));
}

#[test]
fn openapi_path_drops_patterns_and_keeps_literals_and_verb() {
    assert_eq!(template("/v1/{name=shelves/*}:archive").openapi_path(), "/v1/{name}:archive");
    assert_eq!(template("/v1/orders/{order_number}:fulfill").openapi_path(), "/v1/orders/{order_number}:fulfill");
    assert_eq!(template("/v1/{a.b=x/**}").openapi_path(), "/v1/{a.b}");
    assert_eq!(template("/v1/*/a%20b/**").openapi_path(), "/v1/*/a%20b/**");
    assert_eq!(template("/{x}/{y}").openapi_path(), "/{x}/{y}");
}

#[test]
fn text_is_as_written() {
    let t = template("/v1/{name=shelves/*}:archive");
    assert_eq!(t.text(), "/v1/{name=shelves/*}:archive");
    assert_eq!(t.to_string(), t.text());
}

#[test]
fn parse_errors_say_what_is_wrong() {
    let cases = [
        ("", "is empty"),
        ("v1/x", "must start with '/'"),
        ("/", "empty segment at byte 1"),
        ("/v1//x", "empty segment at byte 4"),
        ("/v1/x/", "empty segment at byte 6"),
        ("/v1/:lookup", "empty segment at byte 4"),
        ("/v1/{x=}", "empty segment at byte 7"),
        ("/v1/{x=a//b}", "empty segment at byte 9"),
        ("/v1/{x", "'{' at byte 4 is never closed"),
        ("/v1/{x=a/*", "'{' at byte 4 is never closed"),
        ("/v1/x}", "'}' at byte 5 closes no '{'"),
        ("/v1/}", "'}' at byte 4 closes no '{'"),
        ("/v1/{x=}}", "empty segment"),
        ("/v1/{x={y}}", "variables cannot nest"),
        ("/v1/{x{y}}", "variables cannot nest"),
        ("/v1/{a}/{a}", "binds the field \"a\" twice"),
        ("/v1/{a}/{a.b}", "binds both \"a\" and \"a.b\""),
        ("/v1/{a.b}/{a}", "binds both \"a\" and \"a.b\""),
        ("/v1/{}", "names no field"),
        ("/v1/{1x}", "\"1x\" is not a field path"),
        ("/v1/{a..b}", "\"a..b\" is not a field path"),
        ("/v1/{a-b}", "\"a-b\" is not a field path"),
        ("/v1/{a.}", "\"a.\" is not a field path"),
        ("/v1/{a b}", "\"a b\" is not a field path"),
        ("/v1/**/x", "'**' must be the last segment"),
        ("/{x=**}/y", "'**' must be the last segment"),
        ("/v1/{x=**/a}", "'**' must be the last segment"),
        ("/v1/**/**", "'**' must be the last segment"),
        ("/v1/x:", "the verb after ':' at byte 5 is empty"),
        ("/v1/a:b/c", "':' at byte 5 starts the verb"),
        ("/v1/a:b:c", "':' at byte 7 is not allowed in the verb"),
        ("/v1/x:a*", "'*' at byte 7 is not allowed in the verb"),
        ("/v1/{x=a:b}", "':' at byte 8 inside a variable"),
        ("/v1/a*", "'*' and '**' must be whole segments"),
        ("/v1/*a", "'*' and '**' must be whole segments"),
        ("/v1/***", "'*' and '**' must be whole segments"),
        ("/v1/a{x}", "a segment is a literal or a variable, not both"),
        ("/v1/{x}a", "a variable must be a whole segment"),
        ("/v1/a=b", "'=' at byte 5: is not allowed in a literal"),
        ("/v1/=", "'=' at byte 4 may only follow a variable's field path"),
        ("/v1/a b", "' ' at byte 5: is not allowed in a literal"),
        ("/v1/é", "'é' at byte 4 is not allowed in a literal"),
        ("/v1/a?b", "'?' at byte 5: is not allowed in a literal"),
        ("/v1/a%2", "'%' at byte 1 does not start a percent-escape"),
        ("/v1/a%FF", "not UTF-8 once percent-decoded"),
    ];
    for (text, expected) in cases {
        let reason = parse_error(text);
        assert!(reason.contains(expected), "{text:?}: {reason:?} does not contain {expected:?}");
    }
}

#[test]
fn parse_error_names_the_template() {
    let error = PathTemplate::parse("/v1//x").unwrap_err();
    assert_eq!(error.template, "/v1//x");
    assert!(error.to_string().starts_with("path template \"/v1//x\": "), "{error}");
}

#[test]
fn overlaps_of_real_shapes() {
    let overlap = |a: &str, b: &str| template(a).overlap_witness(&template(b));
    assert_eq!(overlap("/v1/customers/{customer_id}", "/v1/customers:lookup"), None);
    assert_eq!(overlap("/v1/customers:lookup", "/v1/customers:retire"), None);
    assert_eq!(overlap("/v1/x/{id}", "/v1/x/{id}:archive").as_deref(), Some("/v1/x/x:archive"));
    assert_eq!(overlap("/v1/x/{id}:archive", "/v1/x/{id}").as_deref(), Some("/v1/x/x:archive"));
    assert_eq!(overlap("/v1/x/{id}", "/v1/x/{other}").as_deref(), Some("/v1/x/x"));
    assert_eq!(overlap("/v1/{a=**}", "/v1/b/c").as_deref(), Some("/v1/b/c"));
    assert_eq!(overlap("/v1/{a=**}:v", "/v1:v").as_deref(), Some("/v1:v"));
    assert_eq!(overlap("/**:v", "/{x}").as_deref(), Some("/x:v"));
    assert_eq!(overlap("/**:v", "/%3Av").as_deref(), Some("/:v"));
    assert_eq!(overlap("/**", "/v1/x:v").as_deref(), Some("/v1/x:v"));
    assert_eq!(overlap("/v1/a%3Av", "/v1/{x=a}:v").as_deref(), Some("/v1/a:v"));
    assert_eq!(overlap("/v1/a%3Aw", "/v1/{x=a}:v"), None);
    assert_eq!(overlap("/v1/orders/{o}:fulfill", "/v1/orders/{o}/fulfillments"), None);
    assert_eq!(overlap("/v1/a%20b", "/v1/*").as_deref(), Some("/v1/a%20b"));
    assert!(!template("/v1/x").overlaps(&template("/v1/y")));
    assert!(template("/v1/x").overlaps(&template("/v1/x")));
}

mod properties {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::super::*;

    /// What a client leaves unencoded in a path segment: `:` and `+` on
    /// purpose, as course run keys carry them.
    const CLIENT_KEEPS: &AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b':').remove(b'+');

    #[derive(Clone, Debug)]
    enum Piece {
        Literal(&'static str),
        Star,
        /// `{field}` or `{field=pattern}`; the pattern's last element may be `**`.
        Variable(Vec<Piece>),
        DoubleStar,
    }

    const LITERALS: [&str; 4] = ["v1", "shelves", "a+b", "x%20y"];

    fn decoded_literal(raw: &str) -> String {
        percent_decode_str(raw).decode_utf8().unwrap().into_owned()
    }

    fn pattern() -> impl Strategy<Value = Vec<Piece>> {
        let inner = prop_oneof![select(LITERALS.to_vec()).prop_map(Piece::Literal), Just(Piece::Star)];
        (prop::collection::vec(inner, 0..3), any::<bool>()).prop_map(|(mut pieces, rest)| {
            if rest || pieces.is_empty() {
                pieces.push(if rest { Piece::DoubleStar } else { Piece::Star });
            }
            pieces
        })
    }

    /// A template as pieces: top-level pieces, `**` (bare or inside a variable) only last.
    fn pieces() -> impl Strategy<Value = (Vec<Piece>, Option<&'static str>)> {
        let piece = prop_oneof![
            select(LITERALS.to_vec()).prop_map(Piece::Literal),
            Just(Piece::Star),
            Just(Piece::Variable(vec![Piece::Star])),
            pattern()
                .prop_filter("no ** before the end", |p| !matches!(p.last(), Some(Piece::DoubleStar)))
                .prop_map(Piece::Variable),
        ];
        let last =
            prop_oneof![Just(None), Just(Some(Piece::DoubleStar)), pattern().prop_map(|p| Some(Piece::Variable(p))),];
        let verb = prop_oneof![Just(None), Just(Some("archive")), Just(Some("a+b"))];
        (prop::collection::vec(piece, 0..4), last, verb).prop_filter_map(
            "a template has a segment",
            |(mut pieces, last, verb)| {
                pieces.extend(last);
                (!pieces.is_empty()).then_some((pieces, verb))
            },
        )
    }

    fn segment_text(piece: &Piece) -> String {
        match piece {
            Piece::Literal(literal) => literal.to_string(),
            Piece::Star => "*".into(),
            Piece::DoubleStar => "**".into(),
            Piece::Variable(_) => unreachable!("variables do not nest"),
        }
    }

    fn template_text(pieces: &[Piece], verb: Option<&str>) -> String {
        let mut field = 0;
        let segments: Vec<String> = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Variable(pattern) => {
                    field += 1;
                    let pattern: Vec<String> = pattern.iter().map(segment_text).collect();
                    format!("{{f{field}.value={}}}", pattern.join("/"))
                }
                other => segment_text(other),
            })
            .collect();
        format!("/{}{}", segments.join("/"), verb.map(|v| format!(":{v}")).unwrap_or_default())
    }

    /// Random values for a piece's segments: `*` any non-empty text, `**`
    /// zero to two of them, literals themselves (decoded).
    fn values(piece: &Piece) -> BoxedStrategy<Vec<String>> {
        let text = "\\PC{1,6}|[/%:+ ]{1,3}";
        match piece {
            Piece::Literal(literal) => Just(vec![decoded_literal(literal)]).boxed(),
            Piece::Star => text.prop_map(|s| vec![s]).boxed(),
            Piece::DoubleStar => prop::collection::vec(text, 0..3).boxed(),
            Piece::Variable(pattern) => pattern.iter().map(values).collect::<Vec<_>>().prop_map(|v| v.concat()).boxed(),
        }
    }

    fn case() -> impl Strategy<Value = (String, Option<&'static str>, Vec<Piece>, Vec<Vec<String>>)> {
        pieces().prop_flat_map(|(pieces, verb)| {
            let values: Vec<_> = pieces.iter().map(values).collect();
            (Just(template_text(&pieces, verb)), Just(verb), Just(pieces), values)
        })
    }

    fn encode(segment: &str) -> String {
        utf8_percent_encode(segment, CLIENT_KEEPS).to_string()
    }

    proptest! {
        #[test]
        fn rendered_values_match_back((text, verb, pieces, values) in case()) {
            let template = PathTemplate::parse(&text).unwrap();
            let segments: Vec<String> = values.iter().flatten().map(|s| encode(s)).collect();
            let verb = verb.map(|v| format!(":{}", encode(v))).unwrap_or_default();
            let path = format!("/{}{verb}", segments.join("/"));
            let mut expected = Vec::new();
            for (piece, value) in pieces.iter().zip(&values) {
                if let Piece::Variable(pattern) = piece {
                    let single = matches!(pattern.as_slice(), [Piece::Star | Piece::Literal(_)]);
                    let value = if single {
                        value.concat()
                    } else {
                        // A slash inside a segment reaches the service as %2F.
                        value.iter().map(|s| s.replace('/', "%2F")).collect::<Vec<_>>().join("/")
                    };
                    expected.push(Binding { field: format!("f{}.value", expected.len() + 1), value });
                }
            }
            prop_assert_eq!(template.matches(&path), Some(Ok(expected)), "path {}", path);
        }

        #[test]
        fn overlap_witness_is_sound_and_complete(
            a in small_template(),
            b in small_template(),
        ) {
            let (a, b) = (PathTemplate::parse(&a).unwrap(), PathTemplate::parse(&b).unwrap());
            let witness = a.overlap_witness(&b);
            if let Some(witness) = &witness {
                prop_assert!(a.is_match(witness) && b.is_match(witness), "{} and {} vs {}", a, b, witness);
                prop_assert_eq!(b.overlap_witness(&a).is_some(), true);
            }
            for path in small_paths() {
                if a.is_match(&path) && b.is_match(&path) {
                    prop_assert!(witness.is_some(), "{} and {} both match {} but have no witness", a, b, path);
                }
            }
        }

        #[test]
        fn matching_never_panics(text in "\\PC{0,12}|[/{}*=.:a%]{0,12}", path in "\\PC{0,20}|[/:a%F2]{0,20}") {
            for template in ["/v1/{a}", "/{a=**}:v", "/v1/{b=x/*/**}", "/*/a:v", "/**"] {
                let template = PathTemplate::parse(template).unwrap();
                let _ = template.matches(&path);
            }
            if let Ok(template) = PathTemplate::parse(&text) {
                let _ = template.matches(&path);
                let _ = template.openapi_path();
                let _ = template.overlap_witness(&template);
            }
        }
    }

    /// Templates over a tiny alphabet, so random pairs often overlap.
    fn small_template() -> impl Strategy<Value = String> {
        let segment = select(vec!["a", "b", "a%3Av", "%3Av", "*", "{x}", "{y=a/*}"]);
        let last = select(vec!["", "/**", "/{r=**}", "/{r=a/**}"]);
        let verb = select(vec!["", ":v", ":w"]);
        (prop::collection::vec(segment, 0..3), last, verb).prop_filter_map(
            "a template has a segment",
            |(segments, last, verb)| {
                let mut text = segments.iter().map(|s| format!("/{s}")).collect::<String>();
                text.push_str(last);
                // Each template binds x, y and r at most once.
                let once = ["{x}", "{y="].iter().all(|v| text.matches(v).count() <= 1);
                (!text.is_empty() && once).then(|| format!("{text}{verb}"))
            },
        )
    }

    /// Every path of up to three segments over the alphabet, with or
    /// without a verb-like suffix.
    fn small_paths() -> Vec<String> {
        let alphabet = ["a", "b", "x", "a:v", "a%3Av", ":v", "a:w"];
        let mut paths = vec![String::new()];
        let mut all = vec!["/".to_string(), "/:v".to_string(), "/:w".to_string()];
        for _ in 0..3 {
            paths = paths.iter().flat_map(|p| alphabet.iter().map(move |s| format!("{p}/{s}"))).collect();
            for path in &paths {
                all.push(path.clone());
                all.push(format!("{path}:v"));
                all.push(format!("{path}:w"));
            }
        }
        all
    }
}
