// Model output is text, never HTML: paragraphs and fenced code blocks built from text nodes only.

/** Fill `target` with `text` as paragraphs and ``` fenced code blocks. */
export function renderText(target, text) {
  const blocks = [];
  let paragraph = [];
  let code = null;
  const flush = () => {
    if (paragraph.length) blocks.push({ kind: "p", text: paragraph.join("\n") });
    paragraph = [];
  };
  for (const line of text.split("\n")) {
    if (line.trimStart().startsWith("```")) {
      if (code === null) {
        flush();
        code = [];
      } else {
        blocks.push({ kind: "code", text: code.join("\n") });
        code = null;
      }
    } else if (code !== null) {
      code.push(line);
    } else if (line.trim() === "") {
      flush();
    } else {
      paragraph.push(line);
    }
  }
  flush();
  // A fence still open while tokens stream in is shown as code so far.
  if (code !== null) blocks.push({ kind: "code", text: code.join("\n") });
  target.replaceChildren(...blocks.map(toElement));
}

function toElement(block) {
  if (block.kind === "code") {
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    code.textContent = block.text;
    pre.append(code);
    return pre;
  }
  const p = document.createElement("p");
  p.textContent = block.text;
  return p;
}

/** An element with optional class and text, children appended. */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Offer `text` as a file download named `name`. */
export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
