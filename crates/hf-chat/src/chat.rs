//! Chat template rendering as vLLM does it for HF tokenizers: messages normalized the way vLLM's
//! chat utils normalize them (text parts joined with "\n", tool-call arguments parsed to objects,
//! tools dumped as `{type, function: {name, description, parameters}}`), rendered by a Jinja
//! environment configured like transformers' (`trim_blocks`, `lstrip_blocks`, Python string
//! methods, Python `tojson`, `raise_exception`).

use minijinja::{Environment, ErrorKind, Value};
use serde_json::{Map, Value as Json};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Invalid(String),
    #[error("this tokenizer has no chat template")]
    NoTemplate,
    #[error("chat template error: {0}")]
    Template(String),
    /// The rendering ran out of its work budget ([`TEMPLATE_FUEL`]): a hostile template, or a
    /// conversation too large to render at all.
    #[error("the chat template needed more than its budget of {TEMPLATE_FUEL} steps to render")]
    TooCostly,
    #[error("tokenizer error: {0}")]
    Tokenize(String),
}

/// The chat-form fields of an OpenAI request or of vLLM's `/tokenize` chat form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatInput {
    pub messages: Vec<Json>,
    pub tools: Option<Vec<Json>>,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    pub chat_template: Option<String>,
    pub chat_template_kwargs: Option<Map<String, Json>>,
}

impl ChatInput {
    /// Reads the chat fields from a request object, with vLLM's defaults.
    pub fn from_request(obj: &Map<String, Json>) -> Result<Self, ChatError> {
        let messages = match obj.get("messages") {
            Some(Json::Array(m)) => m.clone(),
            Some(_) => return Err(ChatError::Invalid("'messages' must be an array".into())),
            None => return Err(ChatError::Invalid("'messages' is required".into())),
        };
        let flag = |name: &str, default: bool| match obj.get(name) {
            None | Some(Json::Null) => Ok(default),
            Some(Json::Bool(b)) => Ok(*b),
            Some(_) => Err(ChatError::Invalid(format!("'{name}' must be a boolean"))),
        };
        let tools = match obj.get("tools") {
            None | Some(Json::Null) => None,
            Some(Json::Array(t)) => Some(t.clone()),
            Some(_) => return Err(ChatError::Invalid("'tools' must be an array".into())),
        };
        let chat_template = match obj.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(ChatError::Invalid("'chat_template' must be a string".into())),
        };
        let chat_template_kwargs = match obj.get("chat_template_kwargs") {
            None | Some(Json::Null) => None,
            Some(Json::Object(m)) => Some(m.clone()),
            Some(_) => return Err(ChatError::Invalid("'chat_template_kwargs' must be an object".into())),
        };
        let input = Self {
            messages,
            tools,
            add_generation_prompt: flag("add_generation_prompt", true)?,
            continue_final_message: flag("continue_final_message", false)?,
            chat_template,
            chat_template_kwargs,
        };
        if input.add_generation_prompt && input.continue_final_message {
            return Err(ChatError::Invalid(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.".into(),
            ));
        }
        Ok(input)
    }
}

pub(super) struct ChatTemplate {
    /// The environment, with the tokenizer's own template compiled once as `DEFAULT`.
    env: Environment<'static>,
    has_default: bool,
    /// `bos_token`, `eos_token`, … as strings, exposed to the template.
    special_tokens: Map<String, Json>,
}

impl ChatTemplate {
    pub(super) fn from_config(config: &Json, file_template: Option<String>) -> Result<Self, String> {
        let default = match config.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: vLLM uses the one called "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_owned),
            Some(Json::Null) | None => None,
            Some(_) => return Err("'chat_template' must be a string or a list".into()),
        }
        .or(file_template);
        let mut env = environment();
        let has_default = default.is_some();
        if let Some(source) = default {
            env.add_template_owned(DEFAULT, source).map_err(|e| format!("chat template: {}", describe(&e)))?;
        }
        let mut special_tokens = Map::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] {
            let text = match config.get(key) {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_owned),
                _ => None,
            };
            if let Some(text) = text {
                special_tokens.insert(key.to_owned(), Json::String(text));
            }
        }
        if let Some(list) = config.get("additional_special_tokens") {
            special_tokens.insert("additional_special_tokens".into(), list.clone());
        }
        Ok(Self { env, has_default, special_tokens })
    }

    pub(super) fn render(&self, input: &ChatInput) -> Result<String, ChatError> {
        if input.chat_template.is_none() && !self.has_default {
            return Err(ChatError::NoTemplate);
        }
        let messages = input.messages.iter().map(normalize_message).collect::<Result<Vec<_>, _>>()?;
        let mut ctx = self.special_tokens.clone();
        if let Some(kwargs) = &input.chat_template_kwargs {
            for (k, v) in kwargs {
                ctx.insert(k.clone(), v.clone());
            }
        }
        ctx.insert("messages".into(), Json::Array(messages.clone()));
        if let Some(tools) = &input.tools {
            let tools = tools.iter().map(normalize_tool).collect::<Result<Vec<_>, _>>()?;
            ctx.insert("tools".into(), Json::Array(tools));
        }
        // With continue_final_message the generation prompt is off (both set is rejected earlier).
        ctx.insert("add_generation_prompt".into(), Json::Bool(input.add_generation_prompt));

        let ctx = Value::from(minijinja::value::Serde(&ctx));
        let rendered = match &input.chat_template {
            Some(source) => self.env.render_str(source, ctx),
            None => self.env.get_template(DEFAULT).and_then(|t| t.render(ctx)),
        }
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => ChatError::TooCostly,
            _ => ChatError::Template(describe(&e)),
        })?;
        if input.continue_final_message {
            return continue_final(rendered, &messages);
        }
        Ok(rendered)
    }
}

/// vLLM cuts the prompt right after the final message's content so generation continues it.
fn continue_final(rendered: String, messages: &[Json]) -> Result<String, ChatError> {
    let last = messages.last().ok_or_else(|| ChatError::Invalid("'messages' is empty".into()))?;
    let content = last.get("content").and_then(Json::as_str).unwrap_or("");
    if content.is_empty() {
        return Ok(rendered);
    }
    match rendered.rfind(content) {
        Some(at) => Ok(rendered[..at + content.len()].to_owned()),
        None => Err(ChatError::Invalid("the final message's content is not in the rendered template".into())),
    }
}

const DEFAULT: &str = "default";

/// The work budget of one rendering (minijinja fuel: about one per instruction and per 64 bytes
/// of data made): it bounds both the CPU time and the memory any template can take. Real chat
/// templates use about 25 + 10 per message plus one per 64 bytes of output; a 4,096-message,
/// 1 MiB conversation stays well inside it.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// How deep templates may nest (minijinja's default is 500).
const RECURSION_LIMIT: usize = 100;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build() {
        env.set_syntax(syntax);
    }
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env
}

fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(&value).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(super::pyjson::dumps(&json, indent)))
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.to_string(),
    }
}

/// One message as vLLM hands it to the template.
fn normalize_message(msg: &Json) -> Result<Json, ChatError> {
    let obj = msg.as_object().ok_or_else(|| ChatError::Invalid("each message must be an object".into()))?;
    let role = obj
        .get("role")
        .and_then(Json::as_str)
        .ok_or_else(|| ChatError::Invalid("each message needs a string 'role'".into()))?;
    let content = match obj.get("content") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => text_of_parts(parts)?,
        Some(_) => return Err(ChatError::Invalid("'content' must be a string or an array of parts".into())),
    };
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role.to_owned()));
    out.insert("content".into(), Json::String(content));
    for key in ["name", "tool_call_id", "reasoning_content", "reasoning"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
        let calls = calls.as_array().ok_or_else(|| ChatError::Invalid("'tool_calls' must be an array".into()))?;
        let calls = calls.iter().map(parse_tool_call_arguments).collect();
        out.insert("tool_calls".into(), Json::Array(calls));
    }
    Ok(Json::Object(out))
}

fn text_of_parts(parts: &[Json]) -> Result<String, ChatError> {
    let mut texts = Vec::with_capacity(parts.len());
    for part in parts {
        match part.get("type").and_then(Json::as_str) {
            Some("text" | "input_text") => {
                let text = part
                    .get("text")
                    .and_then(Json::as_str)
                    .ok_or_else(|| ChatError::Invalid("a text part needs a string 'text'".into()))?;
                texts.push(text);
            }
            Some(other) => {
                return Err(ChatError::Invalid(format!("content part type '{other}' is not supported by a text model")))
            }
            None => return Err(ChatError::Invalid("each content part needs a 'type'".into())),
        }
    }
    Ok(texts.join("\n"))
}

/// vLLM parses JSON-string tool-call arguments into objects before rendering.
fn parse_tool_call_arguments(call: &Json) -> Json {
    let mut call = call.clone();
    if let Some(Json::String(args)) = call.get("function").and_then(|f| f.get("arguments")) {
        if let Ok(parsed) = serde_json::from_str::<Json>(args) {
            call["function"]["arguments"] = parsed;
        }
    }
    call
}

/// vLLM's `tool.model_dump()`: fixed field order, absent optional fields as null.
fn normalize_tool(tool: &Json) -> Result<Json, ChatError> {
    let function = tool
        .get("function")
        .and_then(Json::as_object)
        .ok_or_else(|| ChatError::Invalid("each tool needs a 'function' object".into()))?;
    let name = function
        .get("name")
        .and_then(Json::as_str)
        .ok_or_else(|| ChatError::Invalid("each tool function needs a string 'name'".into()))?;
    let mut f = Map::new();
    f.insert("name".into(), Json::String(name.to_owned()));
    f.insert("description".into(), function.get("description").cloned().unwrap_or(Json::Null));
    f.insert("parameters".into(), function.get("parameters").cloned().unwrap_or(Json::Null));
    let mut out = Map::new();
    out.insert("type".into(), tool.get("type").cloned().unwrap_or_else(|| Json::String("function".into())));
    out.insert("function".into(), Json::Object(f));
    Ok(Json::Object(out))
}
