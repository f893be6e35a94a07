//! The components of the mesh.

use std::fmt;

use kit::db::Migrations;

/// A component the binary can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Component {
    /// The REST/JSON gateway.
    Gateway,
    /// Paid orders to LMS enrollments.
    Fulfillment,
    /// Commerce customers to LMS users.
    CustomerIdentity,
    /// Product events from other lines of business.
    CatalogIngest,
    /// Purchases from the stream, listed per learner.
    PurchaseHistory,
}

impl Component {
    /// Every component, in start order.
    pub const ALL: [Component; 5] = [
        Component::CustomerIdentity,
        Component::CatalogIngest,
        Component::PurchaseHistory,
        Component::Fulfillment,
        Component::Gateway,
    ];

    /// Every component, gateway first, as listed to people.
    pub const DISPLAY_ORDER: [Component; 5] = [
        Component::Gateway,
        Component::Fulfillment,
        Component::CustomerIdentity,
        Component::CatalogIngest,
        Component::PurchaseHistory,
    ];

    /// The four gRPC services.
    pub const SERVICES: [Component; 4] =
        [Component::CustomerIdentity, Component::CatalogIngest, Component::PurchaseHistory, Component::Fulfillment];

    /// The name on the command line: `customer-identity`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Fulfillment => "fulfillment",
            Self::CustomerIdentity => "customer-identity",
            Self::CatalogIngest => "catalog-ingest",
            Self::PurchaseHistory => "purchase-history",
        }
    }

    /// The environment variable that sets its listen address: `MESH_CUSTOMER_IDENTITY__LISTEN`.
    pub fn listen_variable(self) -> String {
        format!("MESH_{}__LISTEN", self.module().to_uppercase())
    }

    /// The Rust module its code lives in, so its spans can be told apart.
    pub fn module(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Fulfillment => "fulfillment",
            Self::CustomerIdentity => "customer_identity",
            Self::CatalogIngest => "catalog_ingest",
            Self::PurchaseHistory => "purchase_history",
        }
    }

    /// Which spans belong to which component, for a process that runs them
    /// all (`up`): each is exported under its own `service.name`.
    pub fn span_components() -> kit::component_spans::Components {
        Self::DISPLAY_ORDER
            .iter()
            .fold(kit::component_spans::Components::new(), |components, component| {
                components.module(component.module(), component.name())
            })
            // `up --with-dev-lms`: the LMS's spans under a name of their own, as a real LMS's would be.
            .module("commerce_mesh::dev_lms", "dev-lms")
    }

    /// The name of the service's storage: its Postgres schema and SQLite file.
    /// None for the gateway, which stores nothing.
    pub fn storage_name(self) -> Option<&'static str> {
        match self {
            Self::Gateway => None,
            Self::Fulfillment => Some(fulfillment::NAME),
            Self::CustomerIdentity => Some(customer_identity::NAME),
            Self::CatalogIngest => Some(catalog_ingest::NAME),
            Self::PurchaseHistory => Some(purchase_history::NAME),
        }
    }

    /// The scope of the service's reads (`<area>:read`); None for the gateway.
    pub fn read_scope(self) -> Option<&'static str> {
        match self {
            Component::Gateway => None,
            Component::Fulfillment => Some("fulfillment:read"),
            Component::CustomerIdentity => Some("identity:read"),
            Component::CatalogIngest => Some("catalog:read"),
            Component::PurchaseHistory => Some("purchases:read"),
        }
    }

    /// The service's migrations; None for the gateway.
    pub fn migrations(self) -> Option<&'static Migrations> {
        match self {
            Self::Gateway => None,
            Self::Fulfillment => Some(&fulfillment::MIGRATIONS),
            Self::CustomerIdentity => Some(&customer_identity::MIGRATIONS),
            Self::CatalogIngest => Some(&catalog_ingest::MIGRATIONS),
            Self::PurchaseHistory => Some(&purchase_history::MIGRATIONS),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `commerce-mesh migrate` migrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MigrateTarget {
    /// Every service's database.
    All,
    /// Fulfillment's.
    Fulfillment,
    /// CustomerIdentity's.
    CustomerIdentity,
    /// CatalogIngest's.
    CatalogIngest,
    /// PurchaseHistory's.
    PurchaseHistory,
}

impl MigrateTarget {
    /// The services it names.
    pub fn components(self) -> Vec<Component> {
        match self {
            Self::All => Component::SERVICES.to_vec(),
            Self::Fulfillment => vec![Component::Fulfillment],
            Self::CustomerIdentity => vec![Component::CustomerIdentity],
            Self::CatalogIngest => vec![Component::CatalogIngest],
            Self::PurchaseHistory => vec![Component::PurchaseHistory],
        }
    }
}
