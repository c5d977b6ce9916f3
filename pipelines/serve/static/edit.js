// ldm-serve page, editing: the init image (uploaded or taken from the gallery) and the inpainting mask painted
// over it. The mask canvas has the image's own pixel size and is stretched over it on screen; what is painted
// is repainted (sent white), the rest is kept (sent black), as ldm-generate's --mask-image.
"use strict";

const Edit = (() => {
  const $ = (id) => document.getElementById(id);
  const PAINT = "rgb(255, 64, 64)";  // shown at half opacity over the image (CSS); only its alpha matters
  let source = null;  // the init image as a data URL, sent as it came (the server hashes its bytes)
  let painting = null;  // the last point of the stroke under way, or null

  const canvas = () => $("mask_canvas");
  const context = () => canvas().getContext("2d");

  // Show `url` as the init image; resolves with {width, height} once loaded; clears the mask.
  function setImage(url) {
    return new Promise((resolve, reject) => {
      const image = $("init_image");
      image.onload = () => {
        source = url;
        canvas().width = image.naturalWidth;
        canvas().height = image.naturalHeight;
        $("brush_size").value = Math.max(1, Math.round(image.naturalWidth / 8));
        $("edit_area").hidden = false;
        $("init_size").textContent = `${image.naturalWidth}×${image.naturalHeight}`;
        resolve({width: image.naturalWidth, height: image.naturalHeight});
      };
      image.onerror = () => reject(new Error("that file is not an image the browser can read"));
      image.src = url;
    });
  }

  function readFile(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // Canvas pixel under a pointer event (the canvas is shown scaled).
  function point(event) {
    const box = canvas().getBoundingClientRect();
    return {x: (event.clientX - box.left) * canvas().width / box.width,
            y: (event.clientY - box.top) * canvas().height / box.height};
  }

  function dab(from, to) {
    const ctx = context();
    const size = Math.max(1, Number($("brush_size").value));
    ctx.fillStyle = ctx.strokeStyle = PAINT;
    ctx.lineWidth = size;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(to.x, to.y, size / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function clear() {
    context().clearRect(0, 0, canvas().width, canvas().height);
  }

  // Swap painted and unpainted pixels (after binarising at half alpha, as the mask is sent).
  function invert() {
    const ctx = context();
    const pixels = ctx.getImageData(0, 0, canvas().width, canvas().height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const painted = pixels.data[i + 3] >= 128;
      pixels.data.set(painted ? [0, 0, 0, 0] : [255, 64, 64, 255], i);
    }
    ctx.putImageData(pixels, 0, 0);
  }

  // The mask as a PNG data URL: white where painted (alpha >= 1/2), black elsewhere; null if nothing painted.
  function mask() {
    const {width, height} = canvas();
    const painted = context().getImageData(0, 0, width, height).data;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const outContext = out.getContext("2d");
    const pixels = outContext.createImageData(width, height);
    let any = false;
    for (let i = 0; i < painted.length; i += 4) {
      const value = painted[i + 3] >= 128 ? 255 : 0;
      any = any || value > 0;
      pixels.data.set([value, value, value, 255], i);
    }
    outContext.putImageData(pixels, 0, 0);
    return any ? out.toDataURL("image/png") : null;
  }

  // Draw a sent mask (white = repaint) back as paint, for "reuse settings".
  function setMask(url) {
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = () => {
        clear();
        const ctx = context();
        ctx.drawImage(image, 0, 0, canvas().width, canvas().height);
        const pixels = ctx.getImageData(0, 0, canvas().width, canvas().height);
        for (let i = 0; i < pixels.data.length; i += 4) {
          pixels.data.set(pixels.data[i] >= 128 ? [255, 64, 64, 255] : [0, 0, 0, 0], i);
        }
        ctx.putImageData(pixels, 0, 0);
        resolve();
      };
      image.src = url;
    });
  }

  function start() {
    const target = canvas();
    target.addEventListener("pointerdown", (event) => {
      if (!target.classList.contains("paintable")) return;
      event.preventDefault();
      target.setPointerCapture(event.pointerId);
      painting = point(event);
      dab(painting, painting);
    });
    target.addEventListener("pointermove", (event) => {
      if (painting === null) return;
      const next = point(event);
      dab(painting, next);
      painting = next;
    });
    for (const name of ["pointerup", "pointercancel"]) {
      target.addEventListener(name, () => { painting = null; });
    }
    $("clear_mask").addEventListener("click", clear);
    $("invert_mask").addEventListener("click", invert);
  }

  return {setImage, readFile, mask, setMask, clear, start, source: () => source,
          paintable: (on) => canvas().classList.toggle("paintable", on)};
})();
