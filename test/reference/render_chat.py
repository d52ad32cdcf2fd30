"""Renders chat templates the way Hugging Face transformers does, as the reference for
test/integration/chat-template-parity.test.ts.

The environment is set up as transformers' `_compile_jinja_template`
(src/transformers/utils/chat_template_utils.py) sets it up: jinja2's ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension and a `{% generation %}` block (transformers'
AssistantTracker, which renders its body unchanged when no assistant mask is asked for), a `tojson` filter
that is json.dumps with ensure_ascii=False, and the globals `raise_exception` and `strftime_now`. The
variables are those `render_jinja_template` passes: messages, tools, documents, add_generation_prompt,
then the tokenizer's special tokens and any extra keyword arguments.

Input (stdin): a JSON list of jobs {template, messages, add_generation_prompt, variables}.
Output (stdout): a JSON list, one {"text": ...} or {"error": ...} per job, in order.
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` renders its body, as transformers' tracker does when inactive."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    env = environment()
    out = []
    for job in json.load(sys.stdin):
        try:
            template = env.from_string(job["template"])
            text = template.render(
                messages=job["messages"],
                tools=job.get("tools"),
                documents=job.get("documents"),
                add_generation_prompt=job["add_generation_prompt"],
                **job.get("variables", {}),
            )
            out.append({"text": text})
        except jinja2.exceptions.TemplateError as err:
            out.append({"error": str(err)})
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
