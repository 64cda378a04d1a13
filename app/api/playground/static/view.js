// What the page shows: the notice line and the messages, built from text nodes only.
import { el } from "./render.js";

export const $ = (id) => document.getElementById(id);
let timer = null; // the notice's countdown or poll, replaced by whatever is shown next

export function notice(text) {
  clearInterval(timer);
  $("notice").textContent = text;
  $("notice").hidden = false;
}

/** Change the notice's words, keeping its timer. */
export function setNotice(text) {
  $("notice").textContent = text;
}

export function clearNotice() {
  clearInterval(timer);
  $("notice").hidden = true;
  $("notice").textContent = "";
}

/** Run `tick` every `ms` for the notice shown now, until `stopTicking` or the next notice. */
export function every(ms, tick) {
  clearInterval(timer);
  timer = setInterval(tick, ms);
}

export function stopTicking() {
  clearInterval(timer);
}

export function countdown(seconds, template, done) {
  let left = Math.max(1, seconds);
  notice(template(left));
  every(1000, () => {
    left -= 1;
    if (left > 0) setNotice(template(left));
    else {
      stopTicking();
      setNotice(done);
    }
  });
}

export function addMessage(role, text) {
  const node = el("div", `msg ${role}`, text);
  $("messages").append(node);
  return node;
}

/** An answer: role article, its text rendered safely, a footer for the figures. */
export function addAnswer() {
  const article = el("article", "msg assistant");
  const body = el("div", "body");
  const meta = el("div", "meta");
  article.append(body, meta);
  $("messages").append(article);
  return { article, body, meta };
}

/** The answer's figures and a Copy button under it. */
export function finish(answer, text, figures) {
  const copy = el("button", "", "Copy");
  copy.type = "button";
  copy.addEventListener("click", () => copyText(copy, text));
  answer.meta.replaceChildren(...figures.map((figure) => el("span", "", figure)), copy);
}

async function copyText(button, text) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  } catch {
    notice("The browser did not allow copying to the clipboard.");
  }
}

export function figuresOf(done, started, first, ended) {
  const usage = done.usage || {};
  const since = first ?? started;
  const seconds = (ended - since) / 1000;
  const rate = seconds > 0 && usage.completion_tokens ? (usage.completion_tokens / seconds).toFixed(1) : "–";
  return [
    done.cached ? "cached" : "not cached",
    `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`,
    `first token ${first === null ? "–" : Math.round(first - started)} ms`,
    `${rate} tokens/s`,
    `finish: ${done.finish_reason}`,
    `request ${done.request_id}`,
  ];
}
