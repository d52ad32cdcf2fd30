import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

/**
 * Used when the model package has no `chat_template` (base models such as stories260K): the messages'
 * contents joined by newlines after BOS, with no role markers, so the model simply continues the text.
 */
export const PLAIN_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% if not loop.last %}\n{% endif %}{% endfor %}";

/** Renders chat messages with the model's own Jinja template, compiled once. */
export class ChatTemplate {
  private readonly template: Template;
  readonly isFallback: boolean;

  constructor(
    source: string | null,
    private readonly specials: { bos_token: string; eos_token: string },
  ) {
    this.isFallback = source === null;
    this.template = new Template(source ?? PLAIN_CHAT_TEMPLATE);
  }

  render(messages: ChatMessage[]): string {
    return this.template.render({
      messages,
      add_generation_prompt: true,
      ...this.specials,
    });
  }
}
