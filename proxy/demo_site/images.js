// Shared by the demo page and its frames (served under /assets/, whose CORP lets COEP frames load
// it): load an image into `into` and resolve with what the browser did, "loaded" or "blocked"
// (CORP and COEP refusals surface as an error event).
function loadImage(url, into) {
  return new Promise((resolve) => {
    const img = new Image();
    img.alt = "";
    img.title = url;
    img.onload = () => resolve("loaded");
    img.onerror = () => resolve("blocked");
    img.src = url;
    into.append(img);
  });
}
