// The page the QR code opens on the phone: #pairing=ID&code=CODE. It claims
// the pairing (the bank keeps the phone secret), shows signet's question
// and answers with this phone's passkey, or refuses.
"use strict";

const $ = (id) => document.getElementById(id);
let pairing = null; // {id, publicKey}

async function claim() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const id = fragment.get("pairing");
  const code = fragment.get("code");
  // The code is good for one claim; keep it out of the history.
  history.replaceState(null, "", location.pathname);
  if (!id || !code) {
    setStatus("pair-status", "error", "This link has no pairing in it; scan the QR code again.");
    return;
  }
  setStatus("pair-status", "busy", "Asking the bank…");
  try {
    const claimed = await api("/pairings/" + encodeURIComponent(id) + "/claim", { code });
    if (claimed.status !== 200) throw claimed;
    pairing = { id, publicKey: claimed.body.publicKey };
    $("pair-display").textContent = claimed.body.display;
    $("pair-approve").disabled = false;
    $("pair-deny").disabled = false;
    setStatus("pair-status", "ok", "Is this you?");
  } catch (e) {
    setStatus("pair-status", "error", "Cannot take this login: " + describe(e));
  }
}

async function approve() {
  if (!pairing) return;
  $("pair-approve").disabled = true;
  $("pair-deny").disabled = true;
  setStatus("pair-result-status", "busy", "Waiting for your passkey…");
  try {
    const credential = await assertWith(pairing.publicKey);
    const answer = await api("/pairings/" + pairing.id + "/approve", { credential });
    show("pair-result", answer.body);
    if (answer.status !== 200) throw answer;
    setStatus("pair-result-status", "ok", "Approved. Your other device is logging in.");
  } catch (e) {
    setStatus("pair-result-status", "error", "Approval failed: " + describe(e));
  }
}

async function deny() {
  if (!pairing) return;
  $("pair-approve").disabled = true;
  $("pair-deny").disabled = true;
  const answer = await api("/pairings/" + pairing.id + "/deny", { reason: "not me" });
  show("pair-result", answer.body);
  if (answer.status === 200) {
    setStatus("pair-result-status", "ok", "Refused. Nobody was logged in.");
  } else {
    setStatus("pair-result-status", "error", "Refusing failed: " + describe(answer));
  }
}

$("pair-approve").addEventListener("click", approve);
$("pair-deny").addEventListener("click", deny);
claim();
