// The guest portal's only script. Pages work without it, and it adds two
// things. The band page takes the code from the band's QR code (carried in
// the URL fragment, which never reaches the server) and posts it. A drop page
// refreshes its stock and state every two seconds and shows the claim form
// only while the drop is open.
"use strict";

const STOCK_INTERVAL_MS = 2000;

function signInFromFragment() {
  const form = document.getElementById("band");
  if (!form || location.hash.length < 2) {
    return;
  }
  let code;
  try {
    code = decodeURIComponent(location.hash.slice(1));
  } catch (error) {
    return;
  }
  // The code leaves the address bar and the history before it is posted.
  history.replaceState(null, "", location.pathname);
  form.elements.namedItem("band_code").value = code;
  form.requestSubmit();
}

const DROP_STATES = ["scheduled", "open", "sold-out", "ended", "stopped"];

// Show the drop's state in words and each part of the page whose
// data-drop-states lists that state; hide the other parts.
function showDropState(state, stateText) {
  const line = document.querySelector("[data-testid=drop-state]");
  if (line) {
    line.dataset.state = state;
    if (typeof stateText === "string" && stateText) {
      line.textContent = stateText;
    }
  }
  for (const part of document.querySelectorAll("[data-drop-states]")) {
    part.hidden = !part.dataset.dropStates.split(" ").includes(state);
  }
}

function refreshStock() {
  const stock = document.querySelector("[data-testid=stock][data-stock-url]");
  if (!stock) {
    return;
  }
  const url = stock.dataset.stockUrl;
  setInterval(async () => {
    if (document.hidden) {
      return;
    }
    try {
      const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) {
        return;
      }
      const figures = await response.json();
      if (Number.isInteger(figures.available)) {
        stock.textContent = String(figures.available);
      }
      if (DROP_STATES.includes(figures.state)) {
        showDropState(figures.state, figures.state_text);
      }
    } catch (error) {
      // A missed refresh is retried on the next tick.
    }
  }, STOCK_INTERVAL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  signInFromFragment();
  refreshStock();
});
