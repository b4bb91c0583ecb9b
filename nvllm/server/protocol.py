"""The OpenAI request bodies nvllm's server accepts (pydantic models), and the error body it
answers with. A field OpenAI defines but nvllm does not implement is accepted only at its neutral
value (what a client sends when it does not use it); any other value, and any unknown field, is
refused naming the field: a request never runs differently from what it asked for.

Types are strict (pydantic's strict mode, on the JSON itself): `true` is not 1, `"true"` is not a
boolean, `1.0` is not an integer (an integer is a number, as in JSON Schema); floats are finite;
integers are within int64 (a seed within what torch.Generator takes), as SamplingParams checks in
the Python API. Invalid JSON — a lone surrogate, nesting past pydantic's depth limit, an integer
of thousands of digits — is a 400 like any other."""
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nvllm.errors import short_repr
from nvllm.sampling_params import INT64, SamplingParams

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
TokenId = Annotated[int, Field(ge=0, le=INT64 - 1)]


class RequestError(Exception):
    """A request the server refuses: becomes an HTTP 4xx with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = STRICT
    # a last chunk with the request's token counts (choices: [])
    include_usage: bool = False


class _Request(BaseModel):
    """Fields common to /v1/completions and /v1/chat/completions."""

    model_config = STRICT
    # the served model's name (GET /v1/models); null: that one
    model: str | None = None
    # null: nvllm's one default (nvllm.sampling_params.DEFAULT_MAX_TOKENS), capped by what max_model_len leaves
    max_tokens: int | None = Field(None, ge=1, le=INT64 - 1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # 0 or -1: off
    top_k: int = Field(0, ge=-1, le=INT64 - 1)
    seed: int | None = Field(None, ge=-INT64, le=2 * INT64 - 1)
    # strings that end the answer (not included in it)
    stop: str | list[str] | None = None
    # token ids that end the answer (nvllm/vLLM extension)
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    # completions of the prompt, each a choice (they share the prompt's KV blocks)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # each choice (and stream chunk) carries the generated token ids (vLLM's extension)
    return_token_ids: bool = False
    # an end-user id: accepted and not used
    user: str | None = None
    # OpenAI's penalties over the generated tokens; 0: off
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    # vLLM's extensions: Hugging Face's repetition penalty (1: off), min_p (0: off), min_tokens
    repetition_penalty: float = Field(1.0, gt=0)
    min_p: float = Field(0.0, ge=0, le=1)
    min_tokens: int = Field(0, ge=0, le=INT64 - 1)
    # OpenAI fields nvllm does not implement: accepted only at their neutral value
    logit_bias: dict[str, float] | None = None

    NEUTRAL: ClassVar[dict] = {"logit_bias": ({},)}

    @field_validator("*")
    @classmethod
    def _neutral_only(cls, value, info):
        neutral = cls.NEUTRAL.get(info.field_name)
        if neutral is not None and value is not None and value not in neutral:
            raise ValueError(f"{info.field_name}={short_repr(value)} is not supported by nvllm's server; leave it out "
                             f"(or send {neutral[0]!r})")
        return value

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options needs stream=true")
        return self

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        try:
            return SamplingParams(n=self.n, temperature=self.temperature, top_k=max(self.top_k, 0), top_p=self.top_p,
                                  min_p=self.min_p, presence_penalty=self.presence_penalty,
                                  frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
                                  max_tokens=self.max_tokens or default_max_tokens, min_tokens=self.min_tokens,
                                  ignore_eos=self.ignore_eos, seed=self.seed, stop=stop or None,
                                  stop_token_ids=self.stop_token_ids or None, logprobs=self.num_logprobs())
        except ValueError as e:  # SamplingParams' message starts with the field it refuses
            field = str(e).split(" ", 1)[0]
            raise RequestError(str(e), param=field if field in type(self).model_fields else None) from None

    def num_logprobs(self) -> int | None:
        """SamplingParams.logprobs: how many most likely tokens each token's logprobs list; None: none."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    # one prompt: a string or a list of token ids
    prompt: str | list[TokenId]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    # the logprobs of each generated token and of this many most likely ones (OpenAI: up to 5; vLLM: 20)
    logprobs: int | None = Field(None, ge=0, le=20)

    NEUTRAL: ClassVar[dict] = {**_Request.NEUTRAL, "echo": (False,), "best_of": (1,), "suffix": ("",)}

    def num_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            if len(prompt) != 1:
                raise ValueError(f"{len(prompt)} prompts in one request: nvllm's server takes one prompt "
                                 f"per request (a string or a list of token ids); send one request each")
            return prompt[0]
        return prompt


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # the chat template may use more keys (name, ...)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    # OpenAI's newer name for max_tokens
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64 - 1)
    tools: list | None = None
    response_format: dict | None = None
    # each generated token's logprob, and with top_logprobs that many most likely tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    NEUTRAL: ClassVar[dict] = {**_Request.NEUTRAL, "tools": ([],), "response_format": ({"type": "text"},)}

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _max_completion_tokens(self):
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
            self.max_tokens = self.max_completion_tokens
        return self

    def conversation(self) -> list[dict]:
        return [{**msg.model_dump(exclude={"content"}), "content": msg.text()} for msg in self.messages]


PARAM_CHARS = 200  # an error's `param`: the field's path, cut to this many characters


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """The request `body` (JSON) as `model`, or a RequestError naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        err = max(errors, key=lambda error: len(error["loc"]))  # of a union's members, the one that got furthest
        loc = [str(part) for part in err["loc"] if not _is_type_tag(part)]
        path = ".".join(loc)
        param = path[:PARAM_CHARS] or None  # (a key may be any length: cut, never echoed whole)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            raise RequestError(f"the request body is not valid JSON ({message}); send a JSON object",
                               code="invalid_json") from None
        if err["type"] == "model_type" and not loc:
            raise RequestError(f"the request body must be a JSON object, got {_json_kind(body)}",
                               code="invalid_json") from None
        if err["type"] == "missing":
            message = f"{param} is required"
        elif err["type"] == "extra_forbidden":
            message = f"unknown field {short_repr(path)}: nvllm's server does not know it; leave it out"
        elif err["type"] != "value_error":
            message = f"{param}: {message} (got {short_repr(err.get('input'))})" if param else message
        raise RequestError(message, param=param, code="invalid_value") from None


def _json_kind(body: bytes) -> str:
    first = body.lstrip()[:1]
    return {b"[": "an array", b'"': "a string"}.get(first, "a number, boolean or null")


def _is_type_tag(part) -> bool:
    """pydantic names the union member that failed inside `loc` ('str', 'list[int]'): not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)
