//! The route table: every binding's HTTP method and path template, checked at
//! start-up so that no request can match two routes.

use std::fmt;

use crate::template::{BadPathValue, Binding, PathTemplate};

/// One route: an HTTP method and a template, and what it leads to.
#[derive(Clone, Debug)]
pub struct Route<T> {
    /// GET, POST, ...
    pub verb: String,
    /// The path template.
    pub template: PathTemplate,
    /// How errors name the route, such as `commerce.fulfillment.v1.FulfillmentService.FulfillOrder`.
    pub label: String,
    /// What the route leads to.
    pub value: T,
}

/// Two routes that would match the same request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflict {
    /// The HTTP method both use.
    pub verb: String,
    /// The first route: label and template.
    pub first: String,
    /// The second route: label and template.
    pub second: String,
    /// A request path both match.
    pub witness: String,
}

impl fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} and {} (both match {})", self.verb, self.first, self.second, self.witness)
    }
}

/// Every conflict found, one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflicts(pub Vec<RouteConflict>);

impl fmt::Display for RouteConflicts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = self.0.len();
        crate::problems::write_list(f, format_args!("{pairs} pair(s) of routes would match the same request:"), &self.0)
    }
}

impl std::error::Error for RouteConflicts {}

/// What a request path leads to.
#[derive(Debug)]
pub enum RouteMatch<'a, T> {
    /// A route, with the values its variables captured.
    Found {
        /// The route.
        route: &'a Route<T>,
        /// The captured values.
        bindings: Vec<Binding>,
    },
    /// A route matched the path, but a captured value is invalid.
    BadPathValue(BadPathValue),
    /// The path matches routes of other methods only.
    MethodNotAllowed {
        /// Their methods.
        allowed: Vec<String>,
    },
    /// Nothing matches the path.
    NotFound,
}

/// Every route, checked for conflicts.
#[derive(Clone, Debug)]
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
}

impl<T> RouteTable<T> {
    /// The table of `routes`, or every pair that would match the same request.
    pub fn new(routes: Vec<Route<T>>) -> Result<Self, RouteConflicts> {
        let describe = |route: &Route<T>| format!("{} {}", route.label, route.template);
        let mut conflicts = Vec::new();
        for (index, first) in routes.iter().enumerate() {
            for second in &routes[index + 1..] {
                if first.verb == second.verb
                    && let Some(witness) = first.template.overlap_witness(&second.template)
                {
                    conflicts.push(RouteConflict {
                        verb: first.verb.clone(),
                        first: describe(first),
                        second: describe(second),
                        witness,
                    });
                }
            }
        }
        if conflicts.is_empty() { Ok(Self { routes }) } else { Err(RouteConflicts(conflicts)) }
    }

    /// Every route.
    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }

    /// The route for `verb` and `path` (percent-encoded, without the query).
    ///
    /// A linear scan: the table is small, and each template refuses most paths
    /// on their segment count before looking at any text. As no two routes of
    /// one method overlap, the first match is the only one.
    pub fn find(&self, verb: &str, path: &str) -> RouteMatch<'_, T> {
        let mut allowed: Vec<&str> = Vec::new();
        for route in &self.routes {
            if route.verb != verb {
                if route.template.is_match(path) {
                    allowed.push(&route.verb);
                }
                continue;
            }
            if let Some(found) = route.template.matches(path) {
                return match found {
                    Ok(bindings) => RouteMatch::Found { route, bindings },
                    Err(bad) => RouteMatch::BadPathValue(bad),
                };
            }
        }
        if allowed.is_empty() {
            return RouteMatch::NotFound;
        }
        allowed.sort_unstable();
        allowed.dedup();
        RouteMatch::MethodNotAllowed { allowed: allowed.into_iter().map(str::to_string).collect() }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn route(verb: &str, template: &str, label: &str) -> Route<String> {
        Route {
            verb: verb.to_string(),
            template: PathTemplate::parse(template).unwrap(),
            label: label.to_string(),
            value: label.to_string(),
        }
    }

    /// The mesh's own routes, each leading to its RPC's full name.
    fn mesh_routes() -> Vec<Route<String>> {
        let pool = proto::descriptor_pool().unwrap();
        let bindings = crate::binding::method_bindings(&pool).unwrap();
        bindings
            .iter()
            .flat_map(|binding| {
                binding.http.iter().map(|http| route(&http.verb, &http.path, binding.method.full_name()))
            })
            .collect()
    }

    fn found<'a>(table: &'a RouteTable<String>, verb: &str, path: &str) -> (&'a str, Vec<(String, String)>) {
        match table.find(verb, path) {
            RouteMatch::Found { route, bindings } => {
                (route.value.as_str(), bindings.into_iter().map(|b| (b.field, b.value)).collect())
            }
            other => panic!("{verb} {path}: {other:?}"),
        }
    }

    #[test]
    fn overlapping_routes_of_one_method_are_all_reported() {
        let conflicts = RouteTable::new(vec![
            route("GET", "/v1/x/{id}", "GetX"),
            route("GET", "/v1/x/{id}:archive", "ArchiveX"),
            route("POST", "/v1/x/{id}", "UpdateX"),
            route("GET", "/v1/y/{a}", "GetY"),
            route("GET", "/v1/y/{b=*}", "GetYAgain"),
            route("GET", "/v1/y/{b}/z", "GetZ"),
        ])
        .unwrap_err();
        assert_eq!(
            conflicts.0,
            [
                RouteConflict {
                    verb: "GET".into(),
                    first: "GetX /v1/x/{id}".into(),
                    second: "ArchiveX /v1/x/{id}:archive".into(),
                    witness: "/v1/x/x:archive".into(),
                },
                RouteConflict {
                    verb: "GET".into(),
                    first: "GetY /v1/y/{a}".into(),
                    second: "GetYAgain /v1/y/{b=*}".into(),
                    witness: "/v1/y/x".into(),
                },
            ]
        );
        let message = conflicts.to_string();
        assert!(message.starts_with("2 pair(s) of routes would match the same request:\n"), "{message}");
        assert!(
            message.contains("  - GET GetX /v1/x/{id} and ArchiveX /v1/x/{id}:archive (both match /v1/x/x:archive)\n"),
            "{message}"
        );
    }

    #[test]
    fn the_same_template_under_two_methods_is_no_conflict() {
        let table = RouteTable::new(vec![route("GET", "/v1/x/{id}", "GetX"), route("PUT", "/v1/x/{id}", "PutX")]);
        assert_eq!(table.unwrap().routes().len(), 2);
    }

    #[test]
    fn the_mesh_routes_do_not_conflict_and_each_finds_its_rpc() {
        let table = RouteTable::new(mesh_routes()).unwrap();
        assert!(table.routes().len() >= 17, "{} routes", table.routes().len());
        for route in table.routes() {
            // A path made for this template alone must lead back to it.
            let path = route.template.overlap_witness(&route.template).unwrap();
            let (rpc, _) = found(&table, &route.verb, &path);
            assert_eq!(rpc, route.value, "{} {path}", route.verb);
        }
    }

    #[test]
    fn the_mesh_routes_bind_real_paths() {
        let table = RouteTable::new(mesh_routes()).unwrap();
        let check = |verb: &str, path: &str, rpc: &str, bindings: &[(&str, &str)]| {
            let expected: Vec<(String, String)> =
                bindings.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect();
            assert_eq!(found(&table, verb, path), (rpc, expected), "{verb} {path}");
        };
        let identity = "commerce.identity.v1.CustomerIdentityService";
        let purchases = "commerce.purchases.v1.PurchaseHistoryService";
        let fulfillment = "commerce.fulfillment.v1.FulfillmentService";
        check("GET", "/v1/customers:lookup", &format!("{identity}.LookupCustomer"), &[]);
        check("GET", "/v1/customers/cust-42", &format!("{identity}.GetCustomer"), &[("customer_id", "cust-42")]);
        check("PUT", "/v1/customers/cust%2042", &format!("{identity}.UpsertCustomer"), &[("customer_id", "cust 42")]);
        check("POST", "/v1/customers:batchLookup", &format!("{identity}.BatchLookupCustomers"), &[]);
        check("GET", "/buyList/ada", &format!("{purchases}.ListPurchases"), &[("username", "ada")]);
        check("POST", "/buy", &format!("{purchases}.RecordPurchase"), &[]);
        check(
            "GET",
            "/v1/course-runs/course-v1:edX+DemoX+2024",
            "commerce.catalog.v1.CatalogIngestService.GetCourseRun",
            &[("course_run_key", "course-v1:edX+DemoX+2024")],
        );
        check("POST", "/v1/orders/ORD-1:fulfill", &format!("{fulfillment}.FulfillOrder"), &[("order_number", "ORD-1")]);
        check(
            "GET",
            "/v1/orders/ORD-1/fulfillments",
            &format!("{fulfillment}.ListOrderFulfillments"),
            &[("order_number", "ORD-1")],
        );
    }

    #[test]
    fn a_path_bound_under_other_methods_only_is_method_not_allowed() {
        let table = RouteTable::new(mesh_routes()).unwrap();
        match table.find("DELETE", "/v1/customers/cust-42") {
            RouteMatch::MethodNotAllowed { allowed } => assert_eq!(allowed, ["GET", "PUT"]),
            other => panic!("{other:?}"),
        }
        match table.find("GET", "/v1/orders/ORD-1:fulfill") {
            RouteMatch::MethodNotAllowed { allowed } => assert_eq!(allowed, ["POST"]),
            other => panic!("{other:?}"),
        }
        match table.find("HEAD", "/v1/products") {
            RouteMatch::MethodNotAllowed { allowed } => assert_eq!(allowed, ["GET"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allowed_methods_are_sorted() {
        // Two routes of one method never match one path (that is a conflict),
        // so each method appears once without deduplication being visible here.
        let table = RouteTable::new(vec![
            route("PUT", "/v1/x/{id}", "PutX"),
            route("GET", "/v1/x/{id}", "GetX"),
            route("POST", "/v1/{name=**}:go", "GoAny"),
            route("DELETE", "/v1/x/{id}:go", "DeleteGo"),
        ])
        .unwrap();
        match table.find("PATCH", "/v1/x/a") {
            RouteMatch::MethodNotAllowed { allowed } => assert_eq!(allowed, ["GET", "PUT"]),
            other => panic!("{other:?}"),
        }
        // `/v1/x/{id}` takes `a:go` as its id: ':' is ordinary without a verb.
        match table.find("PATCH", "/v1/x/a:go") {
            RouteMatch::MethodNotAllowed { allowed } => assert_eq!(allowed, ["DELETE", "GET", "POST", "PUT"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let table = RouteTable::new(mesh_routes()).unwrap();
        for path in [
            "/v2/customers/cust-42",
            "/v1/customers/",
            "/v1/customers/a/b",
            "/",
            "",
            "v1/products",
            "/v1/customers:unknown",
        ] {
            assert!(matches!(table.find("GET", path), RouteMatch::NotFound), "{path}");
        }
    }

    #[test]
    fn an_invalid_value_in_a_matching_path_is_reported_for_its_field() {
        let table = RouteTable::new(mesh_routes()).unwrap();
        match table.find("GET", "/v1/customers/%FF") {
            RouteMatch::BadPathValue(bad) => assert_eq!(bad.field, "customer_id"),
            other => panic!("{other:?}"),
        }
    }
}
