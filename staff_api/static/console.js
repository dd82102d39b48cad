/* The staff console's actions (staff_api/console.py). Every form or button marked data-action
   calls an endpoint of the JSON API with fetch(): the session cookie goes by itself, the CSRF
   cookie is echoed in the header. Nothing is checked here that the API checks: a refusal is
   shown in Russian (a line for its status, then the text for its code or messages, from
   console_ru via CLIENT); the API's English detail only folded away, for the support desk. */
(function () {
  "use strict";

  var CLIENT = JSON.parse(document.getElementById("console-client").textContent);
  var TITLES = CLIENT.status_titles;
  var REFUSALS = CLIENT.command_refusals;

  // 1234567 -> "12 345,67 ₽", as the pages write money (console_ru.rubles)
  function rubles(kopecks) {
    var whole = Math.floor(Math.abs(kopecks) / 100), part = Math.abs(kopecks) % 100;
    return (kopecks < 0 ? "\u2212" : "") + String(whole).replace(/\B(?=(\d{3})+(?!\d))/g, "\u00a0") + "," +
      (part < 10 ? "0" : "") + part + "\u00a0\u20bd";
  }

  // "250,50" or "250.5" or "250" rubles -> kopecks; anything else goes as typed, for the API to refuse
  function kopecks(text) {
    var m = /^(\d{1,9})(?:[.,](\d{1,2}))?$/.exec(text.replace(/[\s\u00a0]/g, ""));
    if (!m) return text;
    return parseInt(m[1], 10) * 100 + (m[2] ? parseInt((m[2] + "0").slice(0, 2), 10) : 0);
  }

  function csrfToken() {
    var prefix = CLIENT.csrf_cookie + "=";
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].indexOf(prefix) === 0) return decodeURIComponent(parts[i].slice(prefix.length));
    }
    return "";
  }

  async function callApi(request) {
    var headers = {};
    headers[CLIENT.csrf_header] = csrfToken();
    var init = { method: request.method, headers: headers, credentials: "same-origin" };
    if (request.headers) Object.keys(request.headers).forEach(function (k) { headers[k] = request.headers[k]; });
    if (request.body !== undefined) {
      headers["Content-Type"] = request.contentType || "application/json";
      init.body = request.contentType ? request.body : JSON.stringify(request.body);
    }
    var response;
    try {
      response = await fetch(request.path, init);
    } catch (e) {
      return { status: 0, data: { detail: String(e) } };
    }
    var data;
    try { data = await response.json(); } catch (e) { data = { detail: "" }; }
    return { status: response.status, data: data || {} };
  }

  // --- showing answers ---------------------------------------------------------------------

  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (attrs) Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function fieldOf(scope, field) {
    var base = String(field || "").replace(/\[\d+\]/g, "");
    return base ? scope.querySelector('[data-field="' + base + '"]') : null;
  }

  function clearErrors(scope, box) {
    box.textContent = "";
    scope.querySelectorAll('[aria-invalid="true"]').forEach(function (node) {
      var described = (node.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
      if (described.indexOf(box.id) < 0) return;  // marked by another form's answer
      node.removeAttribute("aria-invalid");
      described = described.filter(function (id) { return id !== box.id; });
      if (described.length) node.setAttribute("aria-describedby", described.join(" "));
      else node.removeAttribute("aria-describedby");
    });
  }

  function markInvalid(node, box) {
    node.setAttribute("aria-invalid", "true");
    var described = (node.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (described.indexOf(box.id) < 0) described.push(box.id);
    node.setAttribute("aria-describedby", described.join(" "));
  }

  // --- a refusal in Russian: console_ru.refusal_view again, from the same tables ----------------

  // A parameter's value as the person reads it (console_ru._param_text).
  function paramText(code, name, value) {
    var names = CLIENT.param_names[code + "." + name] || CLIENT.param_names[name] || {};
    var named = function (v) { return Object.prototype.hasOwnProperty.call(names, v) ? names[v] : v; };
    if (/_kopecks$/.test(name) && typeof value === "number") return rubles(value);
    if (Array.isArray(value)) return value.map(named).join(", ");
    if (typeof value === "string" && value.indexOf(", ") >= 0 && !(value in names)) {
      return value.split(", ").map(named).join(", ");
    }
    return String(named(value));
  }

  // The Russian text of a code with its parameters, or "".
  function refusalText(code, params) {
    var template = typeof code === "string" ? CLIENT.refusal_texts[code] : undefined;
    if (template === undefined) return "";
    var values = {};
    Object.keys(params || {}).forEach(function (k) { values[k] = paramText(code, k, params[k]); });
    return fill(template, values);
  }

  // A validation message without a code (msgspec's, the strict input rule's, a CSV row's), or "".
  function validationText(message) {
    for (var i = 0; i < CLIENT.validation.length; i++) {
      var m = new RegExp(CLIENT.validation[i][0]).exec(message || "");
      if (m) {
        var groups = {};
        for (var g = 1; g < m.length; g++) groups[String(g)] = m[g] === undefined ? "" : m[g];
        return fill(CLIENT.validation[i][1], groups);
      }
    }
    return "";
  }

  function errorText(e) {
    return refusalText(e.code, e.params) || validationText(String(e.message || "")) || CLIENT.item_unknown;
  }

  // The main Russian line of a refusal that is not a 422 with fields.
  function refusalMain(answer) {
    var data = answer.data || {};
    if (answer.status === 409 && REFUSALS[data.reason]) {
      // a refused money command: the gateway's reason in Russian, its limit in rubles
      var params = (data.result && data.result.params) || [];
      var limit = typeof params[1] === "number" ? rubles(params[1]) : "";
      return REFUSALS[data.reason].replace("{max}", limit);
    }
    if (answer.status === 0) return "";  // no answer at all: the status line says it
    return refusalText(data.code, data.params) || CLIENT.refusal_unknown;
  }

  // The API's English words, folded away: for the support desk, never the text to read.
  function supportDetails(detail) {
    var details = el("details", null, { "class": "support" });
    details.appendChild(el("summary", CLIENT.support_summary));
    details.appendChild(el("code", detail, { lang: "en" }));
    return details;
  }

  function showRefusal(scope, box, answer) {
    clearErrors(scope, box);
    var title = TITLES[String(answer.status)] || TITLES["500"];
    box.appendChild(el("span", answer.status ? title + " (" + answer.status + ")" : title));
    if (answer.status === 401) {
      box.appendChild(document.createTextNode(" "));
      box.appendChild(el("a", "Войти", { href: CLIENT.console + "/signin?next=" + encodeURIComponent(location.pathname) }));
    }
    var errors = Array.isArray(answer.data.errors) ? answer.data.errors : [];
    var first = null;
    if (answer.status === 422 && errors.length) {
      var list = el("ul");
      errors.forEach(function (e) {
        var node = fieldOf(scope, e.field);
        var item = el("li");
        if (node && node.dataset.label) item.appendChild(el("span", "«" + node.dataset.label + "»: "));
        item.appendChild(el("span", errorText(e)));
        list.appendChild(item);
        if (node) { markInvalid(node, box); first = first || node; }
      });
      box.appendChild(list);
    } else {
      var main = refusalMain(answer);
      if (main) box.appendChild(el("span", " " + main, { "class": "detail" }));
    }
    if (answer.data.detail) box.appendChild(supportDetails(answer.data.detail));
    if (first && typeof first.focus === "function") {
      (first.matches("fieldset") ? first.querySelector("input") || first : first).focus();
    }
  }

  function goTo(path, done) {
    location.assign(path + (done ? "?done=" + encodeURIComponent(done) : ""));
  }

  function value(form, name) {
    var node = form.elements[name];
    return node ? String(node.value).trim() : "";
  }

  function checked(form, name) {
    return Array.prototype.filter.call(form.querySelectorAll('input[name="' + name + '"]'), function (c) {
      return c.checked;
    }).map(function (c) { return c.value; });
  }

  // Digits become numbers; anything else goes as typed, for the API to refuse by name.
  function number(text) { return /^\d{1,15}$/.test(text) ? parseInt(text, 10) : text; }

  // --- the actions ---------------------------------------------------------------------------

  var pupilPage = function (node) { return CLIENT.console + "/pupils/" + node.dataset.pupil; };

  var ACTIONS = {
    enrol: function (form) {
      var body = { full_name: value(form, "full_name"), grade: number(value(form, "grade")),
                   class_name: value(form, "class_name") };
      var category = value(form, "free_meal_category");
      if (category) body.free_meal_category = category;
      if (value(form, "family_id")) body.family_id = number(value(form, "family_id"));
      if (value(form, "card_uid")) body.card = { uid: value(form, "card_uid"), kind: value(form, "card_kind") };
      return { method: "POST", path: "/schools/" + value(form, "school_id") + "/pupils", body: body,
               done: function (data) { goTo(CLIENT.console + "/pupils/" + data.account_id, "enrolled"); } };
    },
    import: function (form) {
      var file = form.elements.file.files[0];
      if (!file) return { local: "Выберите файл CSV." };
      return { method: "POST", path: "/schools/" + value(form, "school_id") + "/pupils/import", body: file,
               contentType: "text/csv", done: showImported, refused: showImportErrors };
    },
    school: function (form) {
      var body = { name: value(form, "name"), utc_offset_minutes: number(value(form, "utc_offset_minutes")) };
      if (value(form, "id")) body.id = number(value(form, "id"));
      return { method: "POST", path: "/schools", body: body,
               done: function () { goTo(CLIENT.console + "/admin", "school_created"); } };
    },
    staff: function (form) {
      var body = { login: value(form, "login"), role: value(form, "role") };
      if (value(form, "school_id")) body.school_id = number(value(form, "school_id"));
      return { method: "POST", path: "/staff", body: body, done: showKey };
    },
    rotate: function (button) {
      return { method: "POST", path: "/staff/" + encodeURIComponent(button.dataset.login) + "/token", done: showKey };
    },
    deactivate: function (button) {
      return { method: "DELETE", path: "/staff/" + encodeURIComponent(button.dataset.login),
               done: function () { goTo(CLIENT.console + "/admin", "staff_deactivated"); } };
    },
    bind: function (form) {
      return { method: "POST", path: "/pupils/" + form.dataset.pupil + "/cards",
               body: { uid: value(form, "uid"), kind: value(form, "kind") },
               done: function () { goTo(pupilPage(form), "card_bound"); } };
    },
    temporary: function (form) {
      return { method: "POST", path: "/cards/" + encodeURIComponent(value(form, "original")) + "/temporary",
               body: { reason: value(form, "reason"), temporary_uid: value(form, "temporary_uid") },
               done: function () { goTo(pupilPage(form), "temporary_issued"); } };
    },
    unbind: function (button) {
      return { method: "DELETE", path: "/cards/" + encodeURIComponent(button.dataset.uid),
               done: function () { goTo(pupilPage(button), "card_unbound"); } };
    },
    block: function (button) {
      return { method: "POST", path: "/cards/" + encodeURIComponent(button.dataset.uid) + "/block",
               done: function () { goTo(pupilPage(button), "card_blocked"); } };
    },
    "return": function (button) {
      return { method: "POST", path: "/cards/" + encodeURIComponent(button.dataset.uid) + "/return",
               done: function () { goTo(pupilPage(button), "temporary_returned"); } };
    },
    cash: function (form) {
      // One top-up per page shown and amount: a press repeated (a double click, an answer lost) is
      // the same top-up; another amount after a refusal is another request. The page shown after
      // a top-up has a new key.
      var amount = kopecks(value(form, "amount"));
      return { method: "POST", path: "/money/cash-topups",
               headers: { "Idempotency-Key": form.dataset.key + "-" + encodeURIComponent(String(amount)) },
               body: { account_id: parseInt(form.dataset.pupil, 10), amount_kopecks: amount },
               done: function (data) { goTo(pupilPage(form), data.status === "pending" ? "cash_pending" : "cash_taken"); } };
    },
    application: function (form) {
      var body = {
        full_name: value(form, "full_name"), relation: value(form, "relation"),
        phone: value(form, "phone").replace(/[\s()-]/g, ""),
        pupil_ids: value(form, "pupil_ids").split(/[\s,;]+/).filter(Boolean).map(number),
        channels: checked(form, "channels"), kinds: checked(form, "kinds"),
        consent: form.elements.consent.checked
      };
      if (value(form, "email")) body.email = value(form, "email");
      if (value(form, "consent_date")) body.consent_date = value(form, "consent_date");
      return { method: "POST", path: "/applications", body: body,
               done: function (data) { goTo(CLIENT.console + "/pupils/" + data.pupil_ids[0], "application"); } };
    }
  };

  // --- the CSV report --------------------------------------------------------------------------

  function reportBox() {
    var box = document.getElementById("import-report");
    box.textContent = "";
    return box;
  }

  function showImported(data) {
    var box = reportBox();
    var heading = el("h2", "Зачислено учеников: " + data.imported, { tabindex: "-1" });
    box.appendChild(heading);
    var table = el("table");
    table.appendChild(el("caption", "Новые лицевые счета, в порядке строк файла"));
    var head = el("tr");
    head.appendChild(el("th", "Строка файла", { scope: "col" }));
    head.appendChild(el("th", "Лицевой счёт", { scope: "col" }));
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    data.account_ids.forEach(function (id, i) {
      var row = el("tr");
      row.appendChild(el("td", i + 2));
      var cell = el("td");
      cell.appendChild(el("a", id, { href: CLIENT.console + "/pupils/" + id }));
      row.appendChild(cell);
      body.appendChild(row);
    });
    box.appendChild(table);
    heading.focus();
  }

  function showImportErrors(answer, form, errorBox) {
    var errors = Array.isArray(answer.data.errors) ? answer.data.errors : [];
    if (answer.status !== 422 || !errors.length || errors[0].row === undefined) return false;
    clearErrors(form, errorBox);
    errorBox.appendChild(el("span", TITLES["422"] + " Ничего не импортировано: ошибок " + errors.length +
                                    ". Исправьте файл и загрузите его снова."));
    if (answer.data.detail) errorBox.appendChild(supportDetails(answer.data.detail));
    var box = reportBox();
    var table = el("table");
    table.appendChild(el("caption", "Ошибки в файле"));
    var head = el("tr");
    ["Строка", "Столбец", "Ошибка"].forEach(function (t) { head.appendChild(el("th", t, { scope: "col" })); });
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    errors.forEach(function (e) {
      var row = el("tr");
      row.appendChild(el("td", e.row));
      row.appendChild(el("td", e.field));  // the file's own column name, as in its header
      row.appendChild(el("td", errorText(e)));
      body.appendChild(row);
    });
    box.appendChild(table);
    return true;
  }

  // A new key is shown once, here: only its hash is kept, nobody can show it again.
  function showKey(data) {
    var box = document.getElementById("key-box");
    box.textContent = "";
    box.appendChild(el("h2", "Ключ доступа для " + data.login));
    box.appendChild(el("p", "Передайте его сотруднику лично. Он показан один раз: потом его не увидит никто."));
    box.appendChild(el("code", data.token, { id: "new-key" }));
    box.hidden = false;
    box.focus();
  }

  // --- the desk reader: the card presented instead of its UID typed (staff_api/desk.py) --------

  // How often the page asks how the pending operation stands. The bridge posts a card's UID
  // within a second of it being laid on the reader, so the officer sees the result about as soon;
  // a waiting page costs the API one small read a second, for two minutes at most.
  var DESK_POLL_INTERVAL_MS = 1000;
  // Failed polls in a row (no connection, a 5xx) before the page stops waiting and says so.
  var DESK_POLL_FAILURES_MAX = 5;
  // After the countdown reached zero, how long the page still waits for the API to say "expired"
  // (the browser's clock and the server's may differ a little; the API's word decides).
  var DESK_EXPIRY_GRACE_MS = 5000;
  var DESK_COUNTDOWN_TICK_MS = 1000;
  // The reader last picked in this browser: an office has one reader on each desk.
  var DESK_READER_KEY = "ecard.console.deskReader";
  var DESK_DONE = { bind_card: "card_bound", issue_temporary: "temporary_issued" };

  function fill(template, values) {
    return String(template).replace(/\{(\w+)\}/g, function (m, k) { return k in values ? values[k] : m; });
  }

  function minutesSeconds(ms) {
    var s = Math.max(0, Math.ceil(ms / 1000));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  // Why the card rules refused the card presented, in Russian (console_ru.DESK_FAILURES), or "".
  function deskFailure(detail, pupilId) {
    for (var i = 0; i < CLIENT.desk_failures.length; i++) {
      var m = new RegExp(CLIENT.desk_failures[i][0]).exec(detail || "");
      if (m) {
        if (m[1] !== undefined && m[1] === String(pupilId)) return CLIENT.desk.same_pupil;
        return CLIENT.desk_failures[i][1].replace("{1}", m[1] || "");
      }
    }
    return "";
  }

  // The line of the previous action ("Карта привязана.") says nothing of the one starting now.
  function forgetDone() {
    var done = document.getElementById("done");
    if (!done) return;
    done.remove();
    if (/[?&]done=/.test(location.search)) history.replaceState(null, "", location.pathname);
  }

  function deskFlow(box) {
    var select = box.querySelector("[data-desk-reader]");
    if (!select) return;  // the school has no reader: only the UID typed
    var form = box.closest("form");
    var startButton = box.querySelector("[data-desk-start]");
    var waiting = box.querySelector("[data-desk-wait]");
    var countdown = box.querySelector("[data-desk-countdown]");
    var cancelButton = box.querySelector("[data-desk-cancel]");
    var state = box.querySelector("[data-desk-state]");
    var error = box.querySelector("[data-desk-error]");
    var op = null, reader = "", deadline = 0, pollTimer = 0, tickTimer = 0, failures = 0, cancelling = false;

    try {
      var remembered = window.localStorage.getItem(DESK_READER_KEY);
      if (Array.prototype.some.call(select.options, function (o) { return o.value === remembered; })) {
        select.value = remembered;
      }
    } catch (e) { /* no storage: the first reader */ }
    select.addEventListener("change", function () {
      try { window.localStorage.setItem(DESK_READER_KEY, select.value); } catch (e) { /* not remembered */ }
    });

    function path(suffix) {
      return "/desk-readers/" + encodeURIComponent(reader) + "/operation" + (suffix || "");
    }

    function operationBody() {
      var pupil = parseInt(box.dataset.pupil, 10);
      if (box.dataset.desk === "bind_card") return { action: "bind_card", pupil_id: pupil, kind: value(form, "kind") };
      return { action: "issue_temporary", pupil_id: pupil, original_uid: value(form, "original"),
               reason: value(form, "reason") };
    }

    function stopTimers() {
      clearTimeout(pollTimer);
      clearInterval(tickTimer);
      pollTimer = tickTimer = 0;
    }

    function tick() { countdown.textContent = minutesSeconds(deadline - Date.now()); }

    // The wait is over: say how (a line in the status, or an error; the API's English detail,
    // if any, folded away for the support desk).
    function end(message, asError, detail) {
      stopTimers();
      op = null;
      cancelling = false;
      waiting.hidden = true;
      startButton.disabled = select.disabled = false;
      clearErrors(form, error);
      state.textContent = asError ? "" : message;
      if (asError) {
        error.appendChild(el("span", message));
        if (detail) error.appendChild(supportDetails(detail));
      }
      startButton.focus();
    }

    // True when the operation has ended (and the page says how, or shows the card bound).
    function settle(operation) {
      switch (operation.status) {
        case "pending":
          return false;
        case "done":
          stopTimers();
          op = null;
          goTo(pupilPage(box), DESK_DONE[operation.action]);
          return true;
        case "failed":
          var failed = CLIENT.desk[operation.action === "bind_card" ? "bind_failed" : "temporary_failed"];
          var why = deskFailure(operation.error, operation.pupil_id) ||
                    refusalText(operation.error_code, operation.error_params) || CLIENT.refusal_unknown;
          end(failed + " " + why, true, operation.error);
          return true;
        case "expired":
          end(CLIENT.desk.expired, true);
          return true;
        default:  // cancelled: here, or by another officer's cancel
          end(CLIENT.desk.cancelled, !cancelling, cancelling ? "" : operation.error);
          return true;
      }
    }

    function pollLater() {
      clearTimeout(pollTimer);
      pollTimer = setTimeout(poll, DESK_POLL_INTERVAL_MS);
    }

    async function poll() {
      var mine = op;
      if (!mine) return;
      var answer = await callApi({ method: "GET", path: path() });
      if (op !== mine) return;  // ended meanwhile (cancelled, or another poll's answer)
      if (answer.status === 200) {
        failures = 0;
        if (answer.data.id !== mine.id) {  // a newer operation on the reader cancelled this one
          end(fill(CLIENT.desk.superseded, { reader: reader }), true);
          return;
        }
        if (settle(answer.data)) return;
      } else if (answer.status === 0 || answer.status >= 500) {
        failures += 1;
        if (failures >= DESK_POLL_FAILURES_MAX) { end(CLIENT.desk.lost, true, answer.data.detail); return; }
      } else {  // 401, 403, 404: the page cannot follow the operation any more
        end("", false);
        showRefusal(form, error, answer);
        return;
      }
      if (Date.now() > deadline + DESK_EXPIRY_GRACE_MS) { end(CLIENT.desk.expired, true); return; }
      pollLater();
    }

    async function start() {
      if (op) return;
      reader = select.value;
      clearErrors(form, error);
      forgetDone();
      state.textContent = fill(CLIENT.desk.starting, { reader: reader });
      startButton.disabled = select.disabled = true;
      box.setAttribute("aria-busy", "true");
      var answer = await callApi({ method: "POST", path: path(), body: operationBody() });
      box.removeAttribute("aria-busy");
      if (answer.status !== 201) {
        startButton.disabled = select.disabled = false;
        state.textContent = "";
        showRefusal(form, error, answer);
        return;
      }
      op = answer.data;
      failures = 0;
      deadline = Date.now() + (op.expires_at_ms - op.started_at_ms);  // the browser's clock, the API's lifetime
      state.textContent = fill(CLIENT.desk.waiting, { reader: reader });
      waiting.hidden = false;
      tick();
      tickTimer = setInterval(tick, DESK_COUNTDOWN_TICK_MS);
      pollLater();
      cancelButton.focus();
    }

    async function cancel() {
      var mine = op;
      if (!mine || cancelling) return;
      cancelling = true;
      cancelButton.disabled = true;
      var answer = await callApi({ method: "POST", path: path("/cancel"), body: { id: mine.id } });
      cancelButton.disabled = false;
      if (op !== mine) return;  // a poll saw the end first
      if (answer.status === 200) { settle(answer.data); return; }
      cancelling = false;
      if (answer.status === 409) { poll(); return; }  // it ended before the cancel: say how
      clearErrors(form, error);
      showRefusal(form, error, answer);  // not cancelled: the wait goes on
    }

    startButton.addEventListener("click", start);
    cancelButton.addEventListener("click", cancel);
    // Leaving the page while waiting: the operation is cancelled, so that a card laid on the reader
    // later is not bound to this pupil by a page nobody looks at.
    window.addEventListener("pagehide", function () {
      if (!op) return;
      var headers = { "Content-Type": "application/json" };
      headers[CLIENT.csrf_header] = csrfToken();
      try {
        fetch(path("/cancel"), { method: "POST", headers: headers, body: JSON.stringify({ id: op.id }),
                                 credentials: "same-origin", keepalive: true });
      } catch (e) { /* it expires by itself */ }
    });
  }

  // --- wiring ----------------------------------------------------------------------------------

  async function run(node, form) {
    var box = document.getElementById(node.dataset.error);
    var scope = form || node.closest("section") || document;
    if (node.dataset.confirm && !window.confirm(node.dataset.confirm)) return;
    var request = ACTIONS[node.dataset.action](node);
    clearErrors(scope, box);
    if (request.local) { box.appendChild(el("span", request.local)); return; }
    var buttons = form ? form.querySelectorAll("button") : [node];
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    scope.setAttribute("aria-busy", "true");
    try {
      var answer = await callApi(request);
      if (answer.status >= 200 && answer.status < 300) {
        request.done(answer.data);
      } else if (!(request.refused && request.refused(answer, scope, box))) {
        showRefusal(scope, box, answer);
      }
    } finally {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      scope.removeAttribute("aria-busy");
    }
  }

  document.querySelectorAll("form[data-action]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      run(form, form);
    });
  });
  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () { run(button, null); });
  });
  document.querySelectorAll("fieldset[data-desk]").forEach(deskFlow);
  document.querySelectorAll("[data-print]").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
  var done = document.getElementById("done");
  if (done && done.textContent.trim()) done.focus();
})();
