"""The notebooks' `apply_chat_template` against a Jinja chat template run by transformers.

The Jinja template below is written here from the documented Gemma 3 chat format (facts file,
Tokenizer section), not taken from the notebooks: `<bos>`, then per turn
`<start_of_turn>{user|model}\\n{content, trimmed}<end_of_turn>\\n`, the role "assistant" written
"model", a system message folded into the first user turn before a blank line, and
`<start_of_turn>model\\n` appended for the generation prompt. transformers renders it with its own
`apply_chat_template`, so the comparison checks our Python against an independent renderer.

One deliberate choice: the system text is trimmed like every other message. Google's published
Gemma 3 template trims the user text but appends the system text untrimmed; the two agree
whenever the system message has no surrounding whitespace.
"""

import pytest
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = r"""
{%- if not messages -%}
    {{ raise_exception("No messages.") }}
{%- endif -%}
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = (messages[0]['content'] | trim) + '\n\n' -%}
    {%- set turns = messages[1:] -%}
    {%- if not turns -%}
        {{ raise_exception("A system message must be followed by a user message.") }}
    {%- endif -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
    {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
    {%- if message['role'] != expected -%}
        {{ raise_exception("Roles must alternate user/assistant, starting with user.") }}
    {%- endif -%}
    {{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' -}}
    {{- (first_user_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "single user turn": [user("What is the capital of France?")],
    "one word": [user("Hi")],
    "system + user": [system("You are a terse assistant."), user("Name three primes.")],
    "multi-turn": [user("Hello!"), assistant("Hi, how can I help?"), user("Tell me a joke.")],
    "system + multi-turn": [system("Answer in French."), user("Hello"), assistant("Bonjour !"), user("And 'cat'?")],
    "ends with the assistant": [user("2 + 2?"), assistant("4")],
    "long exchange": [user("a"), assistant("b"), user("c"), assistant("d"), user("e"), assistant("f"), user("g")],
    "whitespace around user": [user("   padded question?  \n\n")],
    "whitespace around every turn": [user("\n\tfirst\t\n"), assistant("  reply \n"), user(" second ")],
    "inner newlines kept": [user("line one\nline two\n\n  indented\n")],
    "code block": [user("Fix this:\n```python\ndef f(x):\n    return x +\n```")],
    "unicode": [user("日本語で答えてください: 東京はどこ？"), assistant("東京は日本にあります。"),
                user("Ünïcödé ✓ 😀👍🏽")],
    "system with surrounding whitespace": [system("  Be brief.  \n"), user("Why is the sky blue?")],
    "user with leading whitespace after system": [system("Be brief."), user("\n  Why is the sky blue?")],
    "multi-line system": [system("Rules:\n1. Be kind.\n2. Be brief."), user("Go.")],
}


@pytest.fixture(scope="module")
def render_reference(offline_folder):
    """transformers' apply_chat_template with CHAT_TEMPLATE: messages, add_generation_prompt -> text."""
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(offline_folder / "tokenizer.json"), bos_token="<bos>")

    def render(messages, add_generation_prompt):
        return hf_tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False,
                                                add_generation_prompt=add_generation_prompt)

    return render


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen-prompt", "no-gen-prompt"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_matches_jinja_template(nb1, render_reference, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    expected = render_reference(messages, add_generation_prompt)
    assert nb1.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_default_adds_generation_prompt(nb1):
    assert nb1.apply_chat_template([user("Hi")]).endswith("<start_of_turn>model\n")


def test_known_format_literally(nb1):
    """Spelled out from the documented format, independent of both templates."""
    assert nb1.apply_chat_template([user("Hi")]) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    assert nb1.apply_chat_template([system("Be brief."), user("Hi"), assistant("Hello."), user("Bye")],
                                        add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n")


def test_model_role_is_an_alias_of_assistant(nb1):
    with_model = [user("Hi"), {"role": "model", "content": "Hello."}, user("Bye")]
    with_assistant = [user("Hi"), assistant("Hello."), user("Bye")]
    assert nb1.apply_chat_template(with_model) == nb1.apply_chat_template(with_assistant)


BAD_CONVERSATIONS = {  # the message named first: the first one out of place, and the role that belongs there
    "empty": ([], r"(?i)message 0 .*'user'.*missing"),
    "two user turns": ([user("a"), user("b")], r"(?i)message 1 .*'assistant'"),
    "two assistant turns": ([user("a"), assistant("b"), assistant("c")], r"(?i)message 2 .*'user'"),
    "starts with assistant": ([assistant("Hello."), user("Hi")], r"(?i)message 0 .*'user'"),
    "unknown role": ([user("a"), {"role": "tool", "content": "b"}], r"(?i)message 1 .*'assistant'.*'tool'"),
    "unknown role first": ([{"role": "narrator", "content": "a"}], r"(?i)message 0 .*'user'.*'narrator'"),
    "system alone": ([system("Be brief.")], r"(?i)message 1 .*'user'.*missing"),
    "system then assistant": ([system("Be brief."), assistant("Ok."), user("Hi")], r"(?i)message 1 .*'user'"),
    "system in the middle": ([user("a"), system("b")], r"(?i)message 1 .*'assistant'.*'system'"),
}


@pytest.mark.parametrize("name", list(BAD_CONVERSATIONS))
def test_bad_conversations_are_refused(nb1, render_reference, name):
    messages, pattern = BAD_CONVERSATIONS[name]
    with pytest.raises(ValueError, match=pattern):
        nb1.apply_chat_template(messages)
    with pytest.raises((TemplateError, ValueError)):  # the reference refuses them too (transformers: [] itself)
        render_reference(messages, True)


@pytest.mark.parametrize("messages, bad_index", [
    ([user("a"), assistant("b"), assistant("c")], 2),
    ([system("s"), user("a"), user("b")], 2),  # counted in the list the caller passed, system included
    ([system("s"), user("a"), assistant("b"), {"role": "tool", "content": "c"}], 3),
], ids=["no system", "system, then two users", "system, then an unknown role"])
def test_error_names_the_offending_message(nb1, messages, bad_index):
    with pytest.raises(ValueError, match=rf"(?i)message {bad_index}\b"):
        nb1.apply_chat_template(messages)


def test_chat_token_ids(nb1, offline_folder):
    tokenizer = nb1.Gemma3Tokenizer(offline_folder / "tokenizer.json")
    text = nb1.apply_chat_template([system("Be brief."), user("Hi"), assistant("Hello."), user("Bye")])
    ids = tokenizer.encode(text, add_bos=False)
    assert ids[:2] == [2, 105]  # <bos> <start_of_turn>: <bos> comes from the text, once
    assert ids.count(2) == 1
    assert ids.count(105) == 4 and ids.count(106) == 3  # markers are single special tokens
    model_newline = tokenizer.encode("model\n", add_bos=False)
    assert ids[-1 - len(model_newline):] == [105, *model_newline]
    assert model_newline[-1] == 107  # "\n"
