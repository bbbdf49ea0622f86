//! The list methods (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`).
//!
//! The filter answers them itself from the policy's catalog definitions ([`crate::local`]);
//! no list request reaches an upstream, so an agent sees exactly what it may call, under the
//! names it must call them by, even while an upstream is down.

/// Which list a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list`.
    Tools,
    /// `prompts/list`.
    Prompts,
    /// `resources/list`.
    Resources,
    /// `resources/templates/list`.
    ResourceTemplates,
}

impl ListKind {
    /// The list kind of a JSON-RPC method, if it is a list method.
    pub fn of(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Self::Tools),
            "prompts/list" => Some(Self::Prompts),
            "resources/list" => Some(Self::Resources),
            "resources/templates/list" => Some(Self::ResourceTemplates),
            _ => None,
        }
    }

    /// The key of the array in `result`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }
}
