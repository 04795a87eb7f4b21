// Shared by the demo bank's pages: calls to the bank's own /api (which
// relays to signet over mutual TLS), and status lines the tests read.
"use strict";

// POST (or GET without body) to the bank; resolves to {status, body}.
async function api(path, body, method) {
  const init = {
    method: method || (body === undefined ? "GET" : "POST"),
    headers: {},
    credentials: "same-origin",
  };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/api" + path, init);
  let parsed = null;
  try {
    parsed = await response.json();
  } catch (_) {
    parsed = null;
  }
  return { status: response.status, body: parsed };
}

// A status line: data-state is "busy", "ok" or "error" (the e2e test waits
// on it), the text says what happened.
function setStatus(id, state, text) {
  const el = document.getElementById(id);
  el.dataset.state = state;
  el.textContent = text;
}

function show(id, value) {
  document.getElementById(id).textContent =
    typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// What went wrong, from a problem answer or an exception.
function describe(answer) {
  if (answer instanceof Error) return answer.name + ": " + answer.message;
  const b = answer.body || {};
  return "HTTP " + answer.status + (b.title ? ": " + b.title : "") + (b.detail ? " (" + b.detail + ")" : "");
}

function webauthnAvailable() {
  return (
    typeof PublicKeyCredential !== "undefined" &&
    typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function" &&
    typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function"
  );
}

// navigator.credentials.get() with signet's request options; the browser's
// own toJSON() of the answer.
async function assertWith(publicKeyJSON) {
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(publicKeyJSON);
  const credential = await navigator.credentials.get({ publicKey });
  return credential.toJSON();
}

async function createWith(publicKeyJSON) {
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(publicKeyJSON);
  const credential = await navigator.credentials.create({ publicKey });
  return credential.toJSON();
}
