// Gallery filters and sorted views over the cards rendered in the page (no network, no libraries).
(function () {
  "use strict";
  var gallery = document.getElementById("gallery");
  var cards = Array.prototype.slice.call(gallery.querySelectorAll(".card"));
  var state = { view: "sample", status: "all", reason: "" };
  var SORTS = {
    sample: null,
    lowest: function (a, b) { return num(a, "clipRewrite") - num(b, "clipRewrite"); },
    gain: function (a, b) { return num(b, "gain") - num(a, "gain"); }
  };
  function num(card, name) { var v = parseFloat(card.dataset[name]); return isNaN(v) ? 0 : v; }
  function inView(card) {
    var views = card.dataset.views.split(" ");
    if (state.view === "sample") { return views.indexOf("sample:" + card.dataset.status) >= 0; }
    return views.indexOf(state.view) >= 0;
  }
  function matches(card) {
    return inView(card) && (state.status === "all" || card.dataset.status === state.status) &&
      (!state.reason || card.dataset.reason === state.reason);
  }
  function update() {
    var ordered = cards.slice();
    if (SORTS[state.view]) { ordered.sort(SORTS[state.view]); }
    var shown = 0;
    ordered.forEach(function (card) {
      var show = matches(card);
      card.hidden = !show;
      shown += show ? 1 : 0;
      gallery.appendChild(card);
    });
    document.querySelectorAll("[data-count-status]").forEach(function (el) {
      var status = el.dataset.countStatus;
      el.textContent = cards.filter(function (c) {
        return inView(c) && (status === "all" || c.dataset.status === status);
      }).length;
    });
    document.getElementById("shown").textContent = shown + " card" + (shown === 1 ? "" : "s") + " shown";
    gallery.dataset.shown = String(shown);
  }
  function bindGroup(name) {
    document.querySelectorAll("[data-" + name + "]").forEach(function (button) {
      if (button.tagName !== "BUTTON") { return; }
      button.addEventListener("click", function () {
        state[name] = button.dataset[name];
        document.querySelectorAll("button[data-" + name + "]").forEach(function (b) {
          b.classList.toggle("on", b === button);
        });
        update();
      });
    });
  }
  bindGroup("view");
  bindGroup("status");
  document.getElementById("reason").addEventListener("change", function (event) {
    state.reason = event.target.value;
    update();
  });
  update();
})();
