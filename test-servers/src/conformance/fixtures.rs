//! The conformance fixtures as data: tool, prompt, resource and template definitions (JSON, as
//! listed), and the contents the scenarios check.

use serde_json::{Value, json};

/// A 1x1 PNG (base64), for image content and `test://static-binary`.
pub const IMAGE_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

/// A minimal WAV file (base64): RIFF header, PCM mono 8 kHz 16-bit, one silent sample.
pub const AUDIO_WAV_BASE64: &str =
    "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQIAAAAAAA==";

/// Text of `test://static-text`.
pub(crate) const STATIC_TEXT: &str = "This is the content of the static text resource.";

/// Text of `test://watched-resource`.
pub(crate) const WATCHED_TEXT: &str = "Watched resource content.";

/// The URI the subscribe/unsubscribe scenarios use.
pub(crate) const WATCHED_URI: &str = "test://watched-resource";

/// Text of `test_error_handling`'s error result.
pub(crate) const ERROR_TEXT: &str = "This tool intentionally returns an error for testing";

/// What `completion/complete` offers for `test_prompt_with_arguments`' arguments (filtered by
/// the typed prefix).
pub(crate) const COMPLETIONS: &[&str] = &["paris", "park", "party", "test", "testing"];

fn no_arguments() -> Value {
    json!({"type": "object", "properties": {}})
}

fn tool(name: &str, description: &str, input_schema: Value) -> Value {
    json!({"name": name, "description": description, "inputSchema": input_schema})
}

/// The `ServerCapabilities` the server declares in `initialize`, as JSON.
pub fn capabilities() -> Value {
    json!({
        "tools": {"listChanged": false},
        "prompts": {"listChanged": false},
        "resources": {"subscribe": true, "listChanged": false},
        "logging": {},
        "completions": {}
    })
}

/// Every tool, in listing order.
pub fn tool_definitions() -> Vec<Value> {
    vec![
        tool(
            "test_simple_text",
            "Returns one text content block.",
            no_arguments(),
        ),
        tool(
            "test_image_content",
            "Returns one image content block (PNG).",
            no_arguments(),
        ),
        tool(
            "test_audio_content",
            "Returns one audio content block (WAV).",
            no_arguments(),
        ),
        tool(
            "test_embedded_resource",
            "Returns one embedded text resource.",
            no_arguments(),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, image and embedded resource content together.",
            no_arguments(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends three log notifications (level info) while it runs.",
            no_arguments(),
        ),
        tool(
            "test_tool_with_progress",
            "Sends progress 0, 50 and 100 of 100 for the request's progress token.",
            no_arguments(),
        ),
        tool(
            "test_error_handling",
            "Always answers with a tool error (isError: true).",
            no_arguments(),
        ),
        tool(
            "test_sampling",
            "Asks the client for an LLM completion (sampling/createMessage) of the prompt.",
            json!({
                "type": "object",
                "properties": {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}},
                "required": ["prompt"]
            }),
        ),
        tool(
            "test_elicitation",
            "Asks the client for user input (elicitation/create) with the message.",
            json!({
                "type": "object",
                "properties": {"message": {"type": "string", "description": "The message to show the user"}},
                "required": ["message"]
            }),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Asks for user input with a default for every primitive type (SEP-1034).",
            no_arguments(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Asks for user input with all five enum schema variants (SEP-1330).",
            no_arguments(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "type": "object",
                        "properties": {"street": {"type": "string"}, "city": {"type": "string"}}
                    }
                },
                "properties": {
                    "name": {"type": "string"},
                    "address": {"$ref": "#/$defs/address"}
                },
                "additionalProperties": false
            }),
        ),
        tool(
            "test_reconnection",
            "Closes its SSE stream mid-call and answers after the client resumed it (SEP-1699).",
            no_arguments(),
        ),
    ]
}

/// Every prompt, in listing order.
pub fn prompt_definitions() -> Vec<Value> {
    vec![
        json!({"name": "test_simple_prompt", "description": "A prompt without arguments."}),
        json!({
            "name": "test_prompt_with_arguments",
            "description": "A prompt with two required arguments.",
            "arguments": [
                {"name": "arg1", "description": "First test argument", "required": true},
                {"name": "arg2", "description": "Second test argument", "required": true}
            ]
        }),
        json!({
            "name": "test_prompt_with_embedded_resource",
            "description": "A prompt that embeds a resource.",
            "arguments": [
                {"name": "resourceUri", "description": "URI of the resource to embed", "required": true}
            ]
        }),
        json!({"name": "test_prompt_with_image", "description": "A prompt with an image."}),
    ]
}

/// Every static resource, in listing order.
pub fn resource_definitions() -> Vec<Value> {
    vec![
        json!({"uri": "test://static-text", "name": "static-text", "mimeType": "text/plain",
               "description": "A static text resource."}),
        json!({"uri": "test://static-binary", "name": "static-binary", "mimeType": "image/png",
               "description": "A static binary resource (PNG)."}),
        json!({"uri": WATCHED_URI, "name": "watched-resource", "mimeType": "text/plain",
               "description": "A resource clients can subscribe to."}),
    ]
}

/// Every resource template, in listing order.
pub fn resource_template_definitions() -> Vec<Value> {
    vec![json!({
        "uriTemplate": "test://template/{id}/data",
        "name": "template-data",
        "mimeType": "application/json",
        "description": "Data for an id, substituted into the content."
    })]
}

/// The contents of `resources/read` for `uri`, or `None` for an unknown URI.
pub(crate) fn read_resource(uri: &str) -> Option<Value> {
    match uri {
        "test://static-text" => {
            Some(json!({"uri": uri, "mimeType": "text/plain", "text": STATIC_TEXT}))
        }
        "test://static-binary" => {
            Some(json!({"uri": uri, "mimeType": "image/png", "blob": IMAGE_PNG_BASE64}))
        }
        WATCHED_URI => Some(json!({"uri": uri, "mimeType": "text/plain", "text": WATCHED_TEXT})),
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")
                .filter(|id| !id.is_empty() && !id.contains('/'))?;
            let text =
                json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
            Some(json!({"uri": uri, "mimeType": "application/json", "text": text.to_string()}))
        }
    }
}

/// The `requestedSchema` of `test_elicitation`.
pub(crate) fn elicitation_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"}
        },
        "required": ["username", "email"]
    })
}

/// The `requestedSchema` of `test_elicitation_sep1034_defaults`: a default for each primitive.
pub(crate) fn sep1034_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active"
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": true}
        }
    })
}

/// The `requestedSchema` of `test_elicitation_sep1330_enums`: the five enum shapes.
pub(crate) fn sep1330_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Untitled single-select",
                "enum": ["option1", "option2", "option3"]
            },
            "titledSingle": {
                "type": "string",
                "description": "Titled single-select",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"}
                ]
            },
            "legacyEnum": {
                "type": "string",
                "description": "Legacy titled enum",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"]
            },
            "untitledMulti": {
                "type": "array",
                "description": "Untitled multi-select",
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]}
            },
            "titledMulti": {
                "type": "array",
                "description": "Titled multi-select",
                "items": {"anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"}
                ]}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_reads_substitute_the_id() {
        let content = read_resource("test://template/123/data").unwrap_or_default();
        assert!(content["text"].as_str().unwrap_or_default().contains("123"));
        assert_eq!(read_resource("test://template//data"), None);
        assert_eq!(read_resource("test://nope"), None);
    }

    #[test]
    fn every_tool_has_a_description_and_schema() {
        for tool in tool_definitions() {
            assert!(tool["description"].is_string(), "{tool}");
            assert!(tool["inputSchema"].is_object(), "{tool}");
        }
    }
}
