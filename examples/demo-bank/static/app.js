// The demo bank's main page: register, log in, pay and approve, and log in
// with the phone by QR code.
"use strict";

const $ = (id) => document.getElementById(id);
let transaction = null; // {id, publicKey} of the payment waiting for approval

async function refreshSession() {
  const answer = await api("/session");
  const user = (answer.body && answer.body.user) || "";
  $("whoami").dataset.user = user;
  $("whoami").textContent = user ? "Logged in as " + user : "Not logged in";
}

async function register() {
  const username = $("reg-username").value.trim();
  setStatus("register-status", "busy", "Asking signet for creation options…");
  show("register-result", "");
  try {
    const options = await api("/registrations/options", { username });
    if (options.status !== 200) throw options;
    setStatus("register-status", "busy", "Waiting for your authenticator…");
    const credential = await createWith(options.body.publicKey);
    const verdict = await api("/registrations/verify", { credential });
    show("register-result", verdict.body);
    if (verdict.status !== 200) throw verdict;
    const v = verdict.body;
    setStatus("register-status", "ok",
      "Registered " + v.userName + " (attestation " + v.fmt + ", tier " + v.tier + ", " + v.decision + ")");
  } catch (e) {
    setStatus("register-status", "error", "Registration failed: " + describe(e));
  }
}

async function login() {
  const username = $("login-username").value.trim();
  setStatus("login-status", "busy", "Asking signet for request options…");
  show("login-result", "");
  try {
    const options = await api("/authentications/options", { username });
    if (options.status !== 200) throw options;
    setStatus("login-status", "busy", "Waiting for your authenticator…");
    const credential = await assertWith(options.body.publicKey);
    const verdict = await api("/authentications/verify", { credential });
    show("login-result", verdict.body);
    if (verdict.status !== 200) throw verdict;
    setStatus("login-status", "ok", "Logged in as " + verdict.body.userName);
  } catch (e) {
    setStatus("login-status", "error", "Login failed: " + describe(e));
  }
  await refreshSession();
}

async function createPayment() {
  transaction = null;
  $("approve-btn").hidden = true;
  $("pay-question").hidden = true;
  $("receipt-box").hidden = true;
  show("approval-result", "");
  setStatus("approve-status", "", "");
  setStatus("pay-status", "busy", "Creating the payment…");
  try {
    const created = await api("/transactions", {
      amount: $("pay-amount").value.trim(),
      currency: $("pay-currency").value,
      payee: $("pay-payee").value.trim(),
    });
    if (created.status !== 201 && created.status !== 200) throw created;
    const t = created.body;
    transaction = { id: t.transactionId, publicKey: t.publicKey };
    $("pay-question").textContent = "Approve " + t.display + "?";
    $("pay-question").hidden = false;
    $("approve-btn").hidden = false;
    setStatus("pay-status", "ok", "Payment " + t.transactionId + " waits for your approval");
  } catch (e) {
    setStatus("pay-status", "error", "Payment refused: " + describe(e));
  }
}

async function approvePayment() {
  if (!transaction) return;
  setStatus("approve-status", "busy", "Waiting for your authenticator…");
  try {
    const credential = await assertWith(transaction.publicKey);
    const answer = await api("/transactions/" + transaction.id + "/approval", { credential });
    show("approval-result", answer.body);
    if (answer.status !== 200) throw answer;
    $("receipt").textContent = answer.body.receipt;
    $("receipt-download").href = "/api/transactions/" + transaction.id + "/receipt";
    $("receipt-download").setAttribute("download", "receipt-" + transaction.id + ".json");
    $("receipt-box").hidden = false;
    $("approve-btn").hidden = true;
    setStatus("approve-status", "ok", "Approved: payment " + transaction.id + " is countersigned");
  } catch (e) {
    setStatus("approve-status", "error", "Approval failed: " + describe(e));
  }
}

// The desktop's side of a QR login: show the code, long-poll, take the login.
async function phoneLogin() {
  $("qr-code").innerHTML = "";
  $("qr-link").hidden = true;
  show("qr-result", "");
  setStatus("qr-status", "busy", "Starting…");
  try {
    const created = await api("/pairings", { username: $("qr-username").value.trim() });
    if (created.status !== 201) throw created;
    const p = created.body;
    $("qr-code").innerHTML = p.qrSvg; // made by the bank's server from the link
    $("qr-link").href = p.phoneLink;
    $("qr-link").textContent = p.phoneLink;
    $("qr-link").hidden = false;
    $("qr-link").dataset.pairingId = p.pairingId;
    $("qr-link").dataset.qrPayload = p.qrPayload;
    setStatus("qr-status", "busy", "Scan the code with your phone (or open the link there)");
    let revision = p.revision;
    for (;;) {
      const polled = await api("/pairings/" + p.pairingId + "?since=" + revision + "&wait=25");
      if (polled.status !== 200) throw polled;
      const s = polled.body;
      revision = s.revision;
      $("qr-status").dataset.pairingState = s.state;
      if (s.state === "claimed") {
        setStatus("qr-status", "busy", "Your phone has the request; approve it there");
      } else if (s.state === "approved") {
        break;
      } else if (s.state !== "created") {
        throw new Error("the pairing is " + s.state + (s.closedReason ? ": " + s.closedReason : ""));
      }
    }
    const login = await api("/pairings/" + p.pairingId + "/consume", undefined, "POST");
    show("qr-result", login.body);
    if (login.status !== 200) throw login;
    $("qr-status").dataset.pairingState = "consumed";
    setStatus("qr-status", "ok", "logged in as " + login.body.userName);
  } catch (e) {
    setStatus("qr-status", "error", "Phone login failed: " + describe(e));
  }
  await refreshSession();
}

async function logout() {
  await api("/logout", {});
  await refreshSession();
}

$("register-btn").addEventListener("click", register);
$("login-btn").addEventListener("click", login);
$("pay-btn").addEventListener("click", createPayment);
$("approve-btn").addEventListener("click", approvePayment);
$("qr-btn").addEventListener("click", phoneLogin);
$("logout-btn").addEventListener("click", logout);
if (!webauthnAvailable()) $("no-webauthn").hidden = false;
refreshSession();
