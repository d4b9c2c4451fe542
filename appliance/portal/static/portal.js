// The guest portal's only script. Pages work without it; it adds two things:
// the band page takes the code from the band's QR code (carried in the URL
// fragment, which never reaches the server) and posts it, and a drop page
// refreshes its stock every two seconds.
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
    } catch (error) {
      // A missed refresh is retried on the next tick.
    }
  }, STOCK_INTERVAL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  signInFromFragment();
  refreshStock();
});
