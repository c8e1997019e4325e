// Conversations kept in this browser (IndexedDB, through idb-keyval): each one's messages,
// title, the model it was with, and when it last changed. Nothing leaves the device; export
// makes a Markdown or JSON file of one.
import { createStore, del, get, set, values } from './vendor/idb-keyval.js';

const store = createStore('emberlm-chat', 'conversations');

/** A new, empty conversation (stored once it has a message). */
export function newConversation(model) {
  const now = Date.now();
  return { id: `c${now.toString(36)}${Math.random().toString(36).slice(2, 8)}`, title: '', renamed: false, model, created: now, updated: now, messages: [] };
}

/** Its title: the name given, else the first message's start. */
export function titleOf(c) {
  if (c.renamed && c.title) return c.title;
  const first = c.messages.find((m) => m.role === 'user')?.content ?? '';
  const line = first.replace(/\s+/g, ' ').trim();
  return line.length > 60 ? `${line.slice(0, 57)}…` : line || 'New conversation';
}

export async function saveConversation(c) {
  c.updated = Date.now();
  c.title = titleOf(c);
  await set(c.id, c, store);
}

export const loadConversation = (id) => get(id, store);
export const deleteConversation = (id) => del(id, store);

/** Every stored conversation, the latest first. */
export async function listConversations() {
  return (await values(store)).sort((a, b) => b.updated - a.updated);
}

/** The conversation as Markdown: a heading, then each message under its speaker. */
export function toMarkdown(c) {
  const who = { system: 'System', user: 'You', assistant: 'Assistant' };
  const parts = [`# ${titleOf(c)}`, `_${c.model ?? ''} · ${new Date(c.updated).toISOString()}_`];
  for (const m of c.messages) parts.push(`**${who[m.role] ?? m.role}:**\n\n${m.content}`);
  return `${parts.join('\n\n')}\n`;
}

/** The conversation as JSON: what is stored, messages in the OpenAI chat shape. */
export const toJson = (c) => `${JSON.stringify({ title: titleOf(c), model: c.model, created: c.created, updated: c.updated, messages: c.messages }, null, 2)}\n`;
