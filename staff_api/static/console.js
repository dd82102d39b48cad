/* The staff console's actions (staff_api/console.py). Every form or button marked data-action
   calls an endpoint of the JSON API with fetch(): the session cookie goes by itself, the CSRF
   cookie is echoed in the header. Nothing is checked here that the API checks: a refusal is
   shown as the API gave it (a Russian line for its status, then the API's own detail). */
(function () {
  "use strict";

  var CLIENT = JSON.parse(document.getElementById("console-client").textContent);
  var TITLES = CLIENT.status_titles;

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
        item.appendChild(el("span", (node && node.dataset.label) ? "«" + node.dataset.label + "»: " : e.field + ": "));
        item.appendChild(el("span", e.message, { lang: "en" }));
        list.appendChild(item);
        if (node) { markInvalid(node, box); first = first || node; }
      });
      box.appendChild(list);
    } else if (answer.data.detail) {
      var detail = el("span", null, { "class": "detail" });
      detail.appendChild(document.createTextNode("Ответ сервера: "));
      detail.appendChild(el("span", answer.data.detail, { lang: "en" }));
      box.appendChild(detail);
    }
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
      row.appendChild(el("td", e.field, { lang: "en" }));
      row.appendChild(el("td", e.message, { lang: "en" }));
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
  document.querySelectorAll("[data-print]").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
  var done = document.getElementById("done");
  if (done && done.textContent.trim()) done.focus();
})();
