// FaceGate's webcam page: register a subject, log in with a liveness challenge, identify.
//
// One ES module, no dependencies and no build step: the page's Content-Security-Policy allows
// scripts, styles and requests of this origin only. Every URL below is relative (no leading
// slash), so the page works under an API Gateway stage's path as well as at the root.
//
// Frames, subject ids and answers are shown on the page and sent to FaceGate only: nothing
// here logs them to the console or keeps them beyond the page's life. The API key is kept
// in sessionStorage: typed once per tab, gone when the tab closes.

const KEY_STORAGE = "facegate.apiKey";
const JPEG_QUALITY = 0.9;
const THUMB_WIDTH = 160;

// Registration: a few frames a little apart, so that one blink or blur does not decide.
const REGISTER_FRAMES = 3;
const REGISTER_INTERVAL_MS = 400;

// Log in: after each instruction, STEP_DELAY_MS for the person to move, then FRAMES_PER_STEP
// frames FRAME_INTERVAL_MS apart (1.6 s): a head takes about a second to turn and hold, and
// the server passes a step when any of its frames shows the movement, measured from the
// median of the "center" frames. An odd count keeps that median on a real frame. The server
// takes at most 6 frames a step (facegate.liveness.challenge.MAX_FRAMES_PER_STEP).
const FRAMES_PER_STEP = 5;
const FRAME_INTERVAL_MS = 400;
const STEP_DELAY_MS = 600;

const INSTRUCTIONS = {
  center: "Look straight at the camera",
  left: "Turn your head to your left",
  right: "Turn your head to your right",
  up: "Tilt your head up",
  down: "Tilt your head down",
};

// What each error code of the API means to the person in front of the camera.
const PHOTO_MESSAGES = {
  no_face: "No face was found. Face the camera, in good light.",
  multiple_faces: "More than one face is in view. Only the person registering should be.",
  face_too_small: "The face is too small. Move closer to the camera.",
  image_too_small: "The picture is too small. The camera's resolution is too low.",
  image_too_large: "The picture is too large to send.",
  invalid_image: "The frame could not be read as an image. Try again.",
};
const LIVENESS_MESSAGES = {
  no_face: "A frame of the check held no face. Stay in view of the camera throughout.",
  several_faces: "Several faces were in view during the check. Only you should be.",
  different_people: "The frames of the check did not all show the same person.",
  no_movement:
    "No head movement was seen. Follow each instruction: a photo or a screen held up " +
    "to the camera is not accepted.",
  missing_step: "A step of the check got no frame. Start again.",
};
const MESSAGES = {
  ...PHOTO_MESSAGES,
  no_key: "Enter the API key first.",
  bad_subject:
    "A subject id is 1 to 128 letters, digits or _ . @ - and starts with a letter, a " +
    "digit or _.",
  network: "FaceGate could not be reached. Check the connection and try again.",
  bad_answer: "FaceGate's answer could not be read. Try again.",
  unauthorized: "The API key was refused. Check it and enter it again.",
  insufficient_scope: "This API key is not allowed to do that.",
  unknown_subject: "No one is registered under that subject id.",
  no_enrolled_faces: "That subject has no registered faces left. Register again.",
  subject_deleted: "That subject is being deleted. Wait a moment and register again.",
  model_mismatch: "That subject was registered with another face model. Register again.",
  unknown_collection: "This API key cannot use the default collection.",
  challenge_expired: "The check took too long and expired. Start again.",
  challenge_unknown: "The check is no longer valid (each one can be used once). Start again.",
  validation_error: "FaceGate refused the request",
  unsupported_media_type: "FaceGate refused the request's format.",
  storage_error: "FaceGate is unavailable right now. Try again shortly.",
  internal_error: "FaceGate failed to answer. Try again shortly.",
  camera_denied: "Camera access was refused. Allow the camera for this page and try again.",
  camera_missing: "No camera was found.",
  camera_busy: "The camera is in use by another application.",
  camera_unsupported: "This browser cannot use the camera here (the page needs https).",
  camera_failed: "The camera could not be started.",
  camera_not_ready: "The camera has no picture yet. Wait a moment and try again.",
  http_413: "The frames were too large to send.",
  http_429: "Too many requests. Wait a moment and try again.",
  http_503: "FaceGate is unavailable right now. Try again shortly.",
  http_504: "FaceGate took too long to answer. Try again.",
};

/** An error to show: a stable ``code`` (the API's, or the page's own) and FaceGate's words. */
class PageError extends Error {
  constructor(code, message, { status = 0, reason = null } = {}) {
    super(message || code);
    this.code = code;
    this.status = status;
    this.reason = reason;
  }
}

/** The sentence to show for an error: ours for the codes we know, FaceGate's otherwise. */
function describe(error) {
  if (!(error instanceof PageError)) {
    return "Something went wrong on this page. Reload it and try again.";
  }
  if (error.code === "liveness_failed") {
    return LIVENESS_MESSAGES[error.reason] || `The liveness check failed: ${error.message}`;
  }
  if (error.code === "validation_error" || error.code === "insufficient_scope") {
    return `${MESSAGES[error.code]}: ${error.message}`;
  }
  const known = MESSAGES[error.code];
  if (known) {
    return known;
  }
  return error.message ? `${error.message} (${error.code})` : `Error ${error.code}.`;
}

const $ = (selector) => document.querySelector(selector);

function element(tag, { text = null, className = null, attrs = {} } = {}) {
  const node = document.createElement(tag);
  if (text !== null) {
    node.textContent = text;
  }
  if (className) {
    node.className = className;
  }
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

// -- the API ------------------------------------------------------------------------------

function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

/** POST ``body`` as JSON to ``path`` (relative); the answer's JSON, or a PageError. */
async function api(path, body) {
  const key = apiKey();
  if (!key) {
    throw new PageError("no_key");
  }
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": key },
      body: JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch {
    throw new PageError("network");
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (!response.ok) {
    const failure = answer && typeof answer === "object" ? answer.error : null;
    if (failure && typeof failure.code === "string") {
      throw new PageError(failure.code, failure.message, {
        status: response.status,
        reason: failure.reason || null,
      });
    }
    // API Gateway's own answers ({"message": ...}): too large, throttled, timed out.
    const message = answer && typeof answer.message === "string" ? answer.message : "";
    throw new PageError(`http_${response.status}`, message || response.statusText, {
      status: response.status,
    });
  }
  if (answer === null || typeof answer !== "object") {
    throw new PageError("bad_answer");
  }
  return answer;
}

// -- the camera ---------------------------------------------------------------------------

const camera = { stream: null };

function setCameraStatus(text) {
  $("#camera-status").textContent = text;
}

function cameraError(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new PageError("camera_denied");
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new PageError("camera_missing");
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return new PageError("camera_busy");
  }
  return new PageError("camera_failed");
}

/** The camera running and showing a picture in the preview; started on first need. */
async function ensureCamera() {
  const video = $("#preview");
  if (camera.stream && camera.stream.active && video.videoWidth > 0) {
    return video;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new PageError("camera_unsupported");
  }
  setCameraStatus("Starting the camera…");
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) {
    setCameraStatus(describe(cameraError(error)));
    throw cameraError(error);
  }
  video.srcObject = camera.stream;
  try {
    await video.play();
  } catch {
    // Autoplay of a muted stream is allowed; a refusal still shows frames once playing.
  }
  const deadline = performance.now() + 5000;
  while (video.videoWidth === 0 && performance.now() < deadline) {
    await sleep(50);
  }
  if (video.videoWidth === 0) {
    throw new PageError("camera_not_ready");
  }
  setCameraStatus("Camera on.");
  return video;
}

function stopCamera() {
  if (camera.stream) {
    for (const track of camera.stream.getTracks()) {
      track.stop();
    }
  }
  camera.stream = null;
  $("#preview").srcObject = null;
  setCameraStatus("Camera off.");
}

/**
 * One frame of the preview: ``image`` is its JPEG as bare base64 (what the API's photo
 * fields take), ``thumb`` a small canvas of it, ``scale`` thumb pixels per frame pixel.
 */
function captureFrame(video) {
  const canvas = $("#capture");
  const width = video.videoWidth;
  const height = video.videoHeight;
  if (!width || !height) {
    throw new PageError("camera_not_ready");
  }
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(video, 0, 0, width, height);
  const url = canvas.toDataURL("image/jpeg", JPEG_QUALITY);
  const scale = THUMB_WIDTH / width;
  const thumb = element("canvas", { className: "thumb mirrored" });
  thumb.width = THUMB_WIDTH;
  thumb.height = Math.round(height * scale);
  thumb.getContext("2d").drawImage(canvas, 0, 0, thumb.width, thumb.height);
  return { image: url.slice(url.indexOf(",") + 1), thumb, scale };
}

/** ``count`` frames ``interval`` ms apart, on a fixed schedule (no drift between frames). */
async function captureSeries(video, count, interval) {
  const start = performance.now();
  const frames = [];
  for (let i = 0; i < count; i += 1) {
    await sleep(start + i * interval - performance.now());
    frames.push(captureFrame(video));
  }
  return frames;
}

/** Outline the face ``box`` ([x1, y1, x2, y2] in frame pixels) on a thumbnail. */
function drawBox(frame, box, colour) {
  if (!Array.isArray(box) || box.length !== 4) {
    return;
  }
  const [x1, y1, x2, y2] = box.map((v) => Number(v) * frame.scale);
  const context = frame.thumb.getContext("2d");
  context.lineWidth = 2;
  context.strokeStyle = colour;
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
}

// -- the page's state ----------------------------------------------------------------------

let busy = false;

/** Run one action at a time, its buttons disabled meanwhile; errors shown, never thrown. */
async function exclusive(panel, result, action) {
  if (busy) {
    return;
  }
  busy = true;
  const buttons = document.querySelectorAll("button[data-action]");
  for (const button of buttons) {
    button.disabled = true;
  }
  panel.setAttribute("aria-busy", "true");
  try {
    await action();
  } catch (error) {
    showError(result, error);
  } finally {
    $("#instruction").textContent = "";
    panel.removeAttribute("aria-busy");
    for (const button of buttons) {
      button.disabled = false;
    }
    busy = false;
  }
}

function showError(result, error) {
  result.replaceChildren(element("p", { text: describe(error), className: "error" }));
  result.dataset.outcome = "error";
  result.dataset.code = error instanceof PageError ? error.code : "page_error";
  if (error instanceof PageError && error.reason) {
    result.dataset.reason = error.reason;
  }
}

function clearResult(result) {
  result.replaceChildren();
  delete result.dataset.outcome;
  delete result.dataset.code;
  delete result.dataset.reason;
}

function subjectOf(input) {
  const value = input.value.trim();
  if (!input.checkValidity() || !value) {
    throw new PageError("bad_subject");
  }
  return value;
}

function amount(value) {
  // A pose movement: not a cosine, so not capped.
  return typeof value === "number" ? value.toFixed(2) : "?";
}

function score(value) {
  // Cosines, shown to 3 decimals as the API gives them (within -1..1).
  return typeof value === "number" ? Math.min(1, Math.max(-1, value)).toFixed(3) : "?";
}

// -- register -----------------------------------------------------------------------------

function frameItem(frame, index) {
  const item = element("li", { className: "frame" });
  frame.thumb.setAttribute("role", "img");
  frame.thumb.setAttribute("aria-label", `Frame ${index + 1}`);
  const caption = element("p", { text: "Sending…", className: "verdict" });
  item.append(frame.thumb, caption);
  return { item, caption };
}

async function outlineFaces(frame) {
  // A rejected frame's answer has no box: the embedding route shows where faces were seen.
  try {
    const found = await api("embedding", { image: frame.image, multi_face: "all" });
    for (const face of found.faces || []) {
      drawBox(frame, face.box, "#b45309");
    }
  } catch {
    // Only an illustration: the verdict is already shown.
  }
}

async function register() {
  const result = $("#register-result");
  const list = $("#register-frames");
  clearResult(result);
  list.replaceChildren();
  const subject = subjectOf($("#register-subject"));
  const video = await ensureCamera();
  result.textContent = "Capturing…";
  const frames = await captureSeries(video, REGISTER_FRAMES, REGISTER_INTERVAL_MS);
  const shown = frames.map((frame, index) => frameItem(frame, index));
  list.replaceChildren(...shown.map((s) => s.item));
  let accepted = 0;
  let faceCount = null;
  for (const [index, frame] of frames.entries()) {
    result.textContent = `Sending frame ${index + 1} of ${frames.length}…`;
    const { item, caption } = shown[index];
    let answer;
    try {
      answer = await api(`subjects/${encodeURIComponent(subject)}/faces`, {
        image: frame.image,
      });
    } catch (error) {
      caption.textContent = describe(error);
      item.dataset.verdict = "error";
      throw error;
    }
    const verdict = (answer.photos || [])[0] || {};
    if (verdict.accepted) {
      accepted += 1;
      item.dataset.verdict = "accepted";
      caption.textContent = "Accepted";
      drawBox(frame, verdict.face && verdict.face.box, "#15803d");
    } else {
      const failure = verdict.error || {};
      item.dataset.verdict = "rejected";
      item.dataset.code = failure.code || "";
      caption.textContent = `Rejected: ${describe(new PageError(failure.code || "rejected", failure.message))}`;
      if (failure.code === "multiple_faces" || failure.code === "face_too_small") {
        await outlineFaces(frame);
      }
    }
    if (typeof answer.face_count === "number") {
      faceCount = answer.face_count;
    }
  }
  const total = frames.length;
  const summary =
    `${accepted} of ${total} frames accepted for ${subject}` +
    (faceCount === null ? "." : `; ${faceCount} faces registered in all.`);
  result.replaceChildren(element("p", { text: summary }));
  result.dataset.outcome = accepted === total ? "accepted" : accepted ? "partial" : "rejected";
}

// -- log in -------------------------------------------------------------------------------

function stepItem(step) {
  const item = element("li", { className: "step" });
  item.dataset.step = step;
  item.append(element("span", { text: INSTRUCTIONS[step] || step }));
  const state = element("span", { text: "waiting", className: "state" });
  item.append(state);
  return { item, state };
}

async function login() {
  const result = $("#login-result");
  const list = $("#login-steps");
  const instruction = $("#instruction");
  clearResult(result);
  list.replaceChildren();
  const subject = subjectOf($("#login-subject"));
  const video = await ensureCamera();
  result.textContent = "Asking for a challenge…";
  const challenge = await api("liveness/challenges", { subject_id: subject });
  const steps = Array.isArray(challenge.steps) ? challenge.steps : [];
  const shown = steps.map(stepItem);
  list.replaceChildren(...shown.map((s) => s.item));
  const frames = [];
  for (const [index, step] of steps.entries()) {
    const { item, state } = shown[index];
    item.classList.add("current");
    state.textContent = "now";
    instruction.textContent = INSTRUCTIONS[step] || step;
    result.textContent = `Step ${index + 1} of ${steps.length}: ${instruction.textContent}.`;
    await sleep(STEP_DELAY_MS);
    const captured = await captureSeries(video, FRAMES_PER_STEP, FRAME_INTERVAL_MS);
    for (const frame of captured) {
      frames.push({ step, image: frame.image });
    }
    item.classList.remove("current");
    state.textContent = step === "center" ? "captured (the reference pose)" : "captured";
  }
  instruction.textContent = "Checking…";
  result.textContent = "Checking…";
  let answer;
  try {
    answer = await api("liveness/verify", {
      challenge_id: challenge.challenge_id,
      subject_id: subject,
      frames,
    });
  } catch (error) {
    if (error instanceof PageError && error.code === "liveness_failed") {
      showDenied(result, subject, error);
      return;
    }
    throw error;
  }
  showLogin(result, shown, answer);
}

function showDenied(result, subject, error) {
  result.replaceChildren(
    element("p", { text: "Access denied", className: "headline denied" }),
    element("p", { text: describe(error) }),
  );
  result.dataset.outcome = "denied";
  result.dataset.code = error.code;
  if (error.reason) {
    result.dataset.reason = error.reason;
  }
}

function showLogin(result, shown, answer) {
  const granted = answer.granted === true;
  const parts = [
    element("p", {
      text: granted ? "Access granted" : "Access denied",
      className: `headline ${granted ? "granted" : "denied"}`,
    }),
    element("p", {
      text: `Similarity ${score(answer.similarity)} (threshold ${score(answer.threshold)}).`,
    }),
  ];
  if (!granted) {
    parts.push(
      element("p", {
        text: `The live face does not match ${answer.subject_id} closely enough.`,
      }),
    );
  }
  result.replaceChildren(...parts);
  result.dataset.outcome = granted ? "granted" : "denied";
  for (const verdict of answer.steps || []) {
    const row = shown.find((s) => s.item.dataset.step === verdict.step);
    if (row) {
      row.state.textContent =
        `${verdict.passed ? "passed" : "failed"} ` +
        `(movement ${amount(verdict.movement)}, required ${amount(verdict.required)})`;
    }
  }
}

// -- identify -----------------------------------------------------------------------------

async function identify() {
  const result = $("#identify-result");
  const list = $("#identify-frames");
  clearResult(result);
  list.replaceChildren();
  const video = await ensureCamera();
  const [frame] = await captureSeries(video, 1, 0);
  const { item, caption } = frameItem(frame, 0);
  list.replaceChildren(item);
  result.textContent = "Searching…";
  let answer;
  try {
    answer = await api("identify", { image: frame.image });
  } catch (error) {
    caption.textContent = describe(error);
    throw error;
  }
  drawBox(frame, answer.face && answer.face.box, "#1d4ed8");
  const candidates = Array.isArray(answer.candidates) ? answer.candidates : [];
  if (!answer.match || candidates.length === 0) {
    caption.textContent = "No match";
    result.replaceChildren(
      element("p", { text: "No match", className: "headline denied" }),
      element("p", {
        text: `Nobody registered is similar enough (threshold ${score(answer.threshold)}).`,
      }),
    );
    result.dataset.outcome = "no_match";
    return;
  }
  caption.textContent = `Best match: ${candidates[0].subject_id}`;
  const ranked = element("ol", { className: "matches" });
  for (const candidate of candidates) {
    const row = element("li");
    row.append(
      element("span", { text: candidate.subject_id, className: "subject" }),
      element("span", { text: ` ${score(candidate.similarity)}`, className: "score" }),
    );
    ranked.append(row);
  }
  result.replaceChildren(
    element("p", { text: `Best match: ${candidates[0].subject_id}`, className: "headline" }),
    element("p", { text: `Scores at or above the threshold ${score(answer.threshold)}:` }),
    ranked,
  );
  result.dataset.outcome = "match";
}

// -- wiring -------------------------------------------------------------------------------

function showKeyStatus() {
  $("#key-status").textContent = apiKey()
    ? "A key is set for this tab (kept until the tab closes)."
    : "No key yet: enter the API key to use the page.";
}

function selectTab(tab, focus) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) {
    tab.focus();
  }
}

function wireTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const [index, tab] of tabs.entries()) {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (event) => {
      const moves = {
        ArrowRight: index + 1,
        ArrowLeft: index - 1,
        Home: 0,
        End: tabs.length - 1,
      };
      if (event.key in moves) {
        event.preventDefault();
        selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length], true);
      }
    });
  }
}

function main() {
  wireTabs();
  showKeyStatus();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#api-key");
    const key = input.value.trim();
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
      input.value = "";
    }
    showKeyStatus();
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyStatus();
  });
  $("#camera-start").addEventListener("click", () => {
    ensureCamera().catch((error) => setCameraStatus(describe(error)));
  });
  $("#camera-stop").addEventListener("click", stopCamera);
  const actions = [
    ["#register-form", "#panel-register", "#register-result", register],
    ["#login-form", "#panel-login", "#login-result", login],
  ];
  for (const [form, panel, result, action] of actions) {
    $(form).addEventListener("submit", (event) => {
      event.preventDefault();
      exclusive($(panel), $(result), action);
    });
  }
  $("#identify-go").addEventListener("click", () =>
    exclusive($("#panel-identify"), $("#identify-result"), identify),
  );
  for (const id of ["#register-go", "#login-go", "#identify-go"]) {
    $(id).dataset.action = "true";
  }
  window.addEventListener("pagehide", stopCamera);
  document.body.dataset.ready = "true";
}

main();
