//! The schemas of what `portable` and `machine` print with `--json`, one
//! file per command in `man/json/` (`TOOL-COMMAND.json`, and `error.json`
//! for the error document of both). They are the one source of truth:
//! contrib/gen.rs renders them into the man pages (built in, so that a
//! change makes the pages again), and the integration test
//! (tests/integration/schema.rs) validates every command's output against
//! them. Both include this file.
//!
//! The schemas use a small subset of JSON Schema, enough to say what a
//! script may rely on: `type` (a name, or a list of names, `null` among them
//! for a value that may be null), `properties`, `required`, `items`,
//! `additionalProperties` (`false`, or the schema of every other key's
//! value), `enum` and `description`. Every object states its
//! `additionalProperties`, so an undocumented key is a test failure, and
//! every value has a `description`, which is what the man page says of it.
//! A command that prints no JSON (an interactive one) has a schema with
//! `"interactive": true` and a description saying why.

// Each includer uses its part: gen.rs the loading, the test the validation.
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

/// The keywords of the subset; anything else in a schema is refused, so a
/// schema cannot say more than the validator checks.
const KEYWORDS: &[&str] =
    &["type", "properties", "required", "items", "additionalProperties", "enum", "description", "interactive"];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean", "null"];

/// One command's schema, from `man/json/TOOL-COMMAND.json`.
#[derive(Debug, Clone)]
pub struct CommandSchema {
    /// `portable`, `machine`, or empty for `error.json`.
    pub tool: String,
    pub command: String,
    pub schema: Value,
}

impl CommandSchema {
    /// A command that prints no JSON, with the reason in its description.
    pub fn is_interactive(&self) -> bool {
        self.schema.get("interactive").and_then(Value::as_bool).unwrap_or(false)
    }
}

/// The directory of the schemas in the source tree.
pub fn schema_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man/json")
}

/// Every schema in `dir`, sorted by file name, each checked with [`check`].
pub fn load_dir(dir: &Path) -> Result<Vec<CommandSchema>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .map(|entry| entry.map(|e| e.path()).map_err(|e| format!("{}: {e}", dir.display())))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "json"));
    files.sort();
    files
        .iter()
        .map(|path| {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let schema = parse(stem, &text).map_err(|e| format!("{}: {e}", path.display()))?;
            match schema.tool.as_str() {
                "" | "portable" | "machine" => Ok(schema),
                other => Err(format!("{}: '{other}' is not one of wharf's tools", path.display())),
            }
        })
        .collect()
}

/// A schema file's text, named `stem` (`portable-list`, `error`).
pub fn parse(stem: &str, text: &str) -> Result<CommandSchema, String> {
    let (tool, command) = match stem.split_once('-') {
        _ if stem == "error" => (String::new(), stem.to_string()),
        Some((tool, command)) if !tool.is_empty() && !command.is_empty() => (tool.to_string(), command.to_string()),
        _ => return Err("not named TOOL-COMMAND.json or error.json".to_string()),
    };
    let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check(&schema, "$")?;
    Ok(CommandSchema { tool, command, schema })
}

/// Whether `schema` (at `at`, a path like `$.units[]`) is in the subset,
/// described, and closed.
pub fn check(schema: &Value, at: &str) -> Result<(), String> {
    let object = schema.as_object().ok_or(format!("{at}: a schema is an object"))?;
    if let Some(unknown) = object.keys().find(|key| !KEYWORDS.contains(&key.as_str())) {
        return Err(format!("{at}: '{unknown}' is not in the subset of JSON Schema wharf uses"));
    }
    let described = object.get("description").and_then(Value::as_str).is_some_and(|d| !d.trim().is_empty());
    if !described {
        return Err(format!("{at}: no description"));
    }
    if object.contains_key("interactive") {
        return if at != "$" || object["interactive"] != Value::Bool(true) {
            Err(format!("{at}: 'interactive' is only `true`, of a whole command"))
        } else if object.len() > 2 {
            Err(format!("{at}: an interactive command has only a description: it prints no JSON"))
        } else {
            Ok(())
        };
    }
    let types = types(schema).map_err(|e| format!("{at}: {e}"))?;
    if types.is_empty() && !object.contains_key("enum") {
        return Err(format!("{at}: no type"));
    }
    if let Some(choices) = object.get("enum") {
        let choices = choices.as_array().ok_or(format!("{at}: enum is a list"))?;
        if choices.is_empty() {
            return Err(format!("{at}: enum is empty"));
        }
    }
    let is_object = types.contains(&"object");
    if is_object {
        match object.get("additionalProperties") {
            Some(Value::Bool(false)) => {}
            Some(other @ Value::Object(_)) => check(other, &format!("{at}.*"))?,
            _ => return Err(format!("{at}: an object states additionalProperties (false, or a schema)")),
        }
        let properties = match object.get("properties") {
            None => serde_json::Map::new(),
            Some(Value::Object(properties)) => properties.clone(),
            Some(_) => return Err(format!("{at}: properties is an object")),
        };
        for (key, property) in &properties {
            check(property, &format!("{at}.{key}"))?;
        }
        for key in object.get("required").map(|r| r.as_array().cloned().unwrap_or_default()).unwrap_or_default() {
            let key = key.as_str().ok_or(format!("{at}: required lists key names"))?;
            if !properties.contains_key(key) {
                return Err(format!("{at}: '{key}' is required but not among the properties"));
            }
        }
    } else if ["properties", "required", "additionalProperties"].iter().any(|k| object.contains_key(*k)) {
        return Err(format!("{at}: properties, required and additionalProperties are of objects"));
    }
    if types.contains(&"array") {
        check(object.get("items").ok_or(format!("{at}: an array says what its items are"))?, &format!("{at}[]"))?;
    } else if object.contains_key("items") {
        return Err(format!("{at}: items are of arrays"));
    }
    Ok(())
}

/// The type names of `schema`: none, one, or a list.
pub fn types(schema: &Value) -> Result<Vec<&str>, String> {
    let names: Vec<&str> = match schema.get("type") {
        None => Vec::new(),
        Some(Value::String(name)) => vec![name.as_str()],
        Some(Value::Array(names)) => {
            names.iter().map(|n| n.as_str().ok_or("type lists names".to_string())).collect::<Result<_, _>>()?
        }
        Some(_) => return Err("type is a name or a list of names".to_string()),
    };
    match names.iter().find(|name| !TYPES.contains(name)) {
        Some(unknown) => Err(format!("'{unknown}' is not a JSON type")),
        None => Ok(names),
    }
}

/// The JSON type of `value`, as a schema names it (an integer is also a number).
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `value` departs from `schema`: one line per offending key, each
/// naming it by its path from `at` (`$.units[0].name: ...`). Empty when it
/// conforms. The schema is taken as [`check`] accepted it.
pub fn validate(schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let types = types(schema).unwrap_or_default();
    let actual = type_of(value);
    let fits = |name: &&str| *name == actual || (*name == "number" && actual == "integer");
    if !types.is_empty() && !types.iter().any(fits) {
        problems.push(format!("{at}: is {actual} ({}), the schema says {}", short(value), types.join(" or ")));
        return problems;
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.contains(value)
    {
        let listed: Vec<String> = choices.iter().map(Value::to_string).collect();
        problems.push(format!("{at}: {} is not one of {}", short(value), listed.join(", ")));
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for key in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if !fields.contains_key(key) {
                    problems.push(format!("{at}.{key}: missing (required)"));
                }
            }
            for (key, field) in fields {
                let here = format!("{at}.{key}");
                match (properties.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                    (Some(property), _) => problems.extend(validate(property, field, &here)),
                    (None, Some(other @ Value::Object(_))) => problems.extend(validate(other, field, &here)),
                    (None, _) => problems.push(format!("{here}: not in the schema")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, element) in items.iter().enumerate() {
                    problems.extend(validate(item, element, &format!("{at}[{i}]")));
                }
            }
        }
        _ => {}
    }
    problems
}

/// A value in a message: short enough for one line.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 { format!("{}...", text.chars().take(60).collect::<String>()) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image() -> Value {
        json!({
            "type": "object",
            "description": "An image.",
            "required": ["name", "size"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "description": "Its name."},
                "size": {"type": "integer", "description": "Bytes."},
                "ratio": {"type": "number", "description": "A share."},
                "profile": {"type": ["string", "null"], "description": "Or null."},
                "state": {"enum": ["attached", "detached"], "description": "Its state."},
                "units": {
                    "type": "array",
                    "description": "Its units.",
                    "items": {
                        "type": "object",
                        "description": "A unit.",
                        "required": ["name"],
                        "additionalProperties": false,
                        "properties": {"name": {"type": "string", "description": "Its name."}}
                    }
                },
                "limits": {
                    "type": "object",
                    "description": "Limits.",
                    "additionalProperties": {"type": "string", "description": "A value."}
                }
            }
        })
    }

    #[test]
    fn a_conforming_document_passes() {
        let schema = image();
        check(&schema, "$").unwrap();
        let good = json!({"name": "a", "size": 3, "ratio": 1, "profile": null, "state": "attached",
                          "units": [{"name": "a.service"}], "limits": {"MemoryMax": "1"}});
        assert_eq!(validate(&schema, &good, "$"), Vec::<String>::new());
        assert!(validate(&schema, &json!({"name": "a", "size": 0, "ratio": 0.5, "profile": "x"}), "$").is_empty());
    }

    #[test]
    fn each_departure_names_its_key() {
        let schema = image();
        let bad = json!({"size": "3", "extra": 1, "profile": 2, "state": "gone",
                         "units": [{"name": "a"}, {"name": 7}], "limits": {"MemoryMax": 1}});
        let problems = validate(&schema, &bad, "$");
        for expected in [
            "$.name: missing (required)",
            "$.size: is string (\"3\"), the schema says integer",
            "$.extra: not in the schema",
            "$.profile: is integer (2), the schema says string or null",
            "$.state: \"gone\" is not one of \"attached\", \"detached\"",
            "$.units[1].name: is integer (7), the schema says string",
            "$.limits.MemoryMax: is integer (1), the schema says string",
        ] {
            assert!(problems.iter().any(|p| p == expected), "{expected} not in {problems:#?}");
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert_eq!(validate(&schema, &json!([]), "$"), ["$: is array ([]), the schema says object"]);
        // A number that is not whole is not an integer.
        assert_eq!(validate(&json!({"type": "integer", "description": "n"}), &json!(1.5), "$").len(), 1);
    }

    #[test]
    fn schemas_outside_the_subset_are_refused() {
        let refused = |schema: Value, why: &str| {
            let error = check(&schema, "$").unwrap_err();
            assert!(error.contains(why), "{error} does not say {why}");
        };
        refused(json!({"type": "string", "description": "x", "format": "uri"}), "'format' is not in the subset");
        refused(json!({"type": "string"}), "no description");
        refused(json!({"type": "text", "description": "x"}), "'text' is not a JSON type");
        refused(json!({"type": "object", "description": "x"}), "states additionalProperties");
        refused(json!({"type": "array", "description": "x"}), "says what its items are");
        refused(
            json!({"type": "object", "description": "x", "additionalProperties": false, "required": ["a"]}),
            "'a' is required but not among the properties",
        );
        refused(
            json!({"type": "object", "description": "x", "additionalProperties": false,
                   "properties": {"a": {"type": "string"}}}),
            "$.a: no description",
        );
        refused(json!({"type": "string", "description": "x", "interactive": true}), "has only a description");
        assert!(
            parse("machine-shell", r#"{"description": "a terminal", "interactive": true}"#).unwrap().is_interactive()
        );
        assert!(parse("list", "{}").unwrap_err().contains("not named TOOL-COMMAND.json"));
        assert_eq!(
            parse("machine-list-images", r#"{"type": "null", "description": "n"}"#).unwrap().command,
            "list-images"
        );
    }

    #[test]
    fn the_shipped_schemas_are_in_the_subset() {
        let schemas = load_dir(&schema_dir()).unwrap();
        assert!(schemas.iter().any(|s| s.command == "error" && s.tool.is_empty()));
        assert!(schemas.iter().any(|s| s.tool == "machine" && s.command == "list-images"));
    }
}
