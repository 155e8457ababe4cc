function render({ model, el }) {
  const colours = JSON.parse(model.get("colours"));
  el.classList.add("maskdet-camera");
  el.innerHTML = `
    <div class="maskdet-camera-bar">
      <button class="maskdet-camera-start">Start camera</button>
      <button class="maskdet-camera-stop" disabled>Stop</button>
      <span class="maskdet-camera-state">camera off</span>
    </div>
    <div class="maskdet-camera-error" style="display:none"></div>
    <canvas class="maskdet-camera-view" width="640" height="480"></canvas>
    <div class="maskdet-camera-stats">no frames yet</div>`;
  const $ = (s) => el.querySelector(s);
  const canvas = $(".maskdet-camera-view"), ctx = canvas.getContext("2d");
  const video = document.createElement("video");
  video.muted = true; video.playsInline = true;
  const grab = document.createElement("canvas");
  let stream = null, timer = null, busy = false, sentAt = 0, nextId = 0, waitingFor = -1;
  let latest = { detections: [], width: 1, height: 1 };
  let frames = 0, latencies = [], times = [];
  const tally = { faces: 0, with_mask: 0, without_mask: 0, mask_weared_incorrect: 0 };

  function showError(text) {
    const box = $(".maskdet-camera-error");
    box.textContent = text; box.style.display = text ? "block" : "none";
    if (text) model.send({ type: "error", message: text });
  }
  function explain(err) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia)
      return "This browser gives no camera here: open the dashboard over https or on localhost / 127.0.0.1.";
    if (err && (err.name === "NotAllowedError" || err.name === "SecurityError"))
      return "Camera permission denied: allow camera access for this page in the browser, then press Start camera.";
    if (err && (err.name === "NotFoundError" || err.name === "OverconstrainedError"))
      return "No camera found: connect one, or use the image upload or the server-side video source.";
    if (err && err.name === "NotReadableError")
      return "The camera is in use by another program: close it and press Start camera.";
    return "The camera could not start: " + (err && err.message ? err.message : err);
  }
  function draw() {
    if (!stream) return;
    if (video.videoWidth) {
      if (canvas.width !== video.videoWidth) { canvas.width = video.videoWidth; canvas.height = video.videoHeight; }
      ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
      const sx = canvas.width / latest.width, sy = canvas.height / latest.height;
      ctx.lineWidth = Math.max(2, Math.round(canvas.width / 320));
      ctx.font = `${Math.max(12, Math.round(canvas.width / 45))}px sans-serif`;
      for (const d of latest.detections) {
        const [x1, y1, x2, y2] = d.box, c = colours[d.label] || [255, 255, 255];
        const colour = `rgb(${c[0]},${c[1]},${c[2]})`;
        ctx.strokeStyle = colour;
        ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
        const text = `${d.label} ${d.confidence.toFixed(2)}`, h = parseInt(ctx.font) + 4;
        const w = ctx.measureText(text).width + 6, top = Math.max(0, y1 * sy - h);
        ctx.fillStyle = colour; ctx.fillRect(x1 * sx, top, w, h);
        ctx.fillStyle = "black"; ctx.fillText(text, x1 * sx + 3, top + h - 5);
      }
    }
    requestAnimationFrame(draw);
  }
  function send() {
    if (!stream || !video.videoWidth) return;
    if (busy && performance.now() - sentAt < 10000) return;  // one frame in flight (re-send after 10 s)
    const scale = Math.min(1, 640 / video.videoWidth);
    grab.width = Math.round(video.videoWidth * scale); grab.height = Math.round(video.videoHeight * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    busy = true; sentAt = performance.now(); waitingFor = nextId++;
    grab.toBlob((blob) => blob.arrayBuffer().then((buffer) => {
      model.send({ type: "frame", id: waitingFor, width: grab.width, height: grab.height }, undefined, [buffer]);
    }), "image/jpeg", 0.8);
  }
  function schedule() {
    if (timer) clearInterval(timer);
    timer = stream ? setInterval(send, 1000 / Math.max(0.2, model.get("fps"))) : null;
  }
  model.on("change:fps", schedule);
  model.on("msg:custom", (msg) => {
    if (msg.type !== "result" || msg.id !== waitingFor) return;
    busy = false;
    const now = performance.now();
    if (msg.error) { $(".maskdet-camera-state").textContent = msg.error; return; }
    latest = msg; frames += 1;
    latencies.push(now - sentAt); times.push(now);
    if (latencies.length > 30) latencies.shift();
    while (times.length && now - times[0] > 5000) times.shift();
    for (const d of msg.detections) { tally.faces += 1; tally[d.label] += 1; }
    const fps = times.length > 1 ? (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000) : 0;
    const rtt = latencies.reduce((a, b) => a + b, 0) / latencies.length;
    const rate = tally.faces ? Math.round(100 * tally.with_mask / tally.faces) + "%" : "n/a";
    const labels = [...new Set(msg.detections.map((d) => d.label))];
    if (now - sentAt >= 1000 / Math.max(0.2, model.get("fps"))) send();  // behind the asked rate: next frame now
    Object.assign(el.dataset, { frames, fps: fps.toFixed(2), latency: rtt.toFixed(1), modelLatency: msg.latency_ms.toFixed(1),
                                boxes: msg.detections.length, labels: labels.join(","), faces: tally.faces, compliance: rate });
    $(".maskdet-camera-stats").textContent =
      `frames ${frames} · ${fps.toFixed(1)} fps · round trip ${rtt.toFixed(0)} ms (model ${msg.latency_ms.toFixed(0)} ms) · ` +
      `boxes ${msg.detections.length} · ${tally.faces} faces: ${tally.with_mask} with mask, ${tally.without_mask} without, ` +
      `${tally.mask_weared_incorrect} incorrect · compliance ${rate}`;
  });
  async function start() {
    showError("");
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw null;
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (err) { stream = null; showError(explain(err)); return; }
    video.srcObject = stream;
    await video.play().catch(() => {});
    $(".maskdet-camera-start").disabled = true; $(".maskdet-camera-stop").disabled = false;
    $(".maskdet-camera-state").textContent = "camera on";
    busy = false; schedule(); requestAnimationFrame(draw);
  }
  function stop() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null; schedule();
    $(".maskdet-camera-start").disabled = false; $(".maskdet-camera-stop").disabled = true;
    $(".maskdet-camera-state").textContent = "camera off";
  }
  $(".maskdet-camera-start").addEventListener("click", start);
  $(".maskdet-camera-stop").addEventListener("click", stop);
  if (model.get("autostart")) start();
  return stop;
}
export default { render };
