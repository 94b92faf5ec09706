// aNode dashboard: plain JavaScript, no build step, no libraries.
//
// Data: one Server-Sent Events stream (/api/v1/live, a `snapshot` event about once a
// second) for everything but records; records come from the node's /ws WebSocket. Changes go
// through the ordinary /api/v1 routes with the bearer token typed in the header (kept in
// localStorage).
//
// Rendering: tables are updated in place (a cell's text is written only when it changed); the
// sources table is virtualised (only the rows in view exist), so thousands of sources cost
// the same per second as thirty.
'use strict';

(function () {
  const HISTORY_SECONDS = 300;      // throughput chart window
  const STALE_AFTER_MS = 5000;      // no snapshot for this long: the view is marked stale
  const ROW_HEIGHT = 26;            // px, sources table rows (matches style.css)
  const OVERSCAN = 8;               // rows rendered beyond the visible ones
  const MAX_VISIBLE_ROWS = 16;      // the sources table scrolls beyond this
  const TAIL_MAX_LINES = 400;       // records kept in the live tail
  const TAIL_FLUSH_MS = 150;        // the tail's DOM is updated at most this often
  const EVENTS_MAX = 500;           // event log entries kept
  const TOKEN_KEY = 'anode.token';
  const COLORS = ['#2f81f7', '#e3772c', '#2da44e', '#b35fd1', '#d1404a', '#1a9fa5', '#a4841c', '#6e7781'];

  const $ = (sel, root) => (root || document).querySelector(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  // Write only when different: keeps layout and selection stable and the DOM work small.
  const setText = (node, text) => {
    text = text === undefined || text === null ? '' : String(text);
    if (node.textContent !== text) node.textContent = text;
  };
  const setAttr = (node, name, value) => {
    value = value === undefined || value === null ? '' : String(value);
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  };

  // Exposed for tests and the curious: counters and the last snapshot.
  const dash = window.anodeDashboard = { snapshots: 0, errors: [], last: null, tailRecords: 0, renderMs: 0 };
  window.addEventListener('error', (e) => dash.errors.push(String(e.message || e)));
  window.addEventListener('unhandledrejection', (e) => dash.errors.push(String(e.reason)));

  // ---------------------------------------------------------------- formatting
  const nf0 = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });
  const nf1 = new Intl.NumberFormat('en', { maximumFractionDigits: 1, minimumFractionDigits: 1 });
  const fmtInt = (n) => (n === undefined || n === null ? '—' : nf0.format(n));
  const fmtRate = (r) => (r === undefined || r === null ? '—' : r >= 100 ? nf0.format(r) : nf1.format(r));
  const fmtBytes = (b) => (b >= 1048576 ? nf1.format(b / 1048576) + ' MiB' : nf0.format(Math.ceil(b / 1024)) + ' KiB');
  function fmtDuration(s) {
    if (s === undefined || s === null) return '—';
    s = Math.floor(s);
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
    return Math.floor(s / 86400) + 'd' + String(Math.floor(s / 3600) % 24).padStart(2, '0') + 'h';
  }
  function fmtAge(ms) {
    if (ms === undefined || ms === null) return '—';
    if (ms < 1000) return nf1.format(ms / 1000) + 's';
    return fmtDuration(ms / 1000);
  }
  function fmtTime(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  // ---------------------------------------------------------------- API calls
  const tokenInput = $('#token');
  tokenInput.value = localStorage.getItem(TOKEN_KEY) || '';
  tokenInput.addEventListener('change', () => {
    const t = tokenInput.value.trim();
    if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
    toast(t ? 'token saved in this browser' : 'token cleared');
    connectLive();
  });

  // EventSource and WebSocket cannot send headers: they carry the token in the query.
  function withToken(path) {
    const token = tokenInput.value.trim();
    if (!token) return path;
    return path + (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
  }

  async function api(method, path, body, contentType) {
    const headers = {};
    const token = tokenInput.value.trim();
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = contentType || 'application/json';
    const response = await fetch(path, { method, headers, body });
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      let message = (data && data.error) || response.status + ' ' + response.statusText;
      if (response.status === 401) message += ' — type the node\'s API token at the top right';
      throw new Error(message);
    }
    return data;
  }

  let toastTimer = 0;
  function toast(message, isError) {
    const t = $('#toast');
    t.textContent = message;
    t.classList.toggle('toast-error', !!isError);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, isError ? 8000 : 3000);
  }

  async function act(what, fn) {
    try {
      await fn();
      toast(what);
    } catch (e) {
      toast(e.message, true);
    }
  }

  // ---------------------------------------------------------------- live stream
  let lastSnapshotAt = 0;
  const conn = $('#conn');
  function setConn(text, cls) {
    setText(conn, text);
    conn.className = 'conn ' + cls;
  }

  let liveSource = null;
  function connectLive() {
    if (liveSource) liveSource.close();
    const source = new EventSource(withToken('/api/v1/live'));
    liveSource = source;
    source.addEventListener('open', () => {
      // A new stream resends every event the node keeps: start the log afresh.
      eventLog.reset();
      setConn('live', 'conn-ok');
    });
    source.addEventListener('snapshot', (e) => {
      lastSnapshotAt = Date.now();
      let snap;
      try { snap = JSON.parse(e.data); } catch (err) { dash.errors.push('bad snapshot: ' + err); return; }
      dash.snapshots += 1;
      dash.last = snap;
      const started = performance.now();
      render(snap);
      dash.renderMs = performance.now() - started;
    });
    source.addEventListener('error', () => {
      // A refused stream (401: a read token is needed) is not retried by the browser.
      if (source.readyState === EventSource.CLOSED) setConn('needs the API token (top right)', 'conn-bad');
      else setConn('reconnecting…', 'conn-wait');
    });
  }
  setInterval(() => {
    const stale = lastSnapshotAt > 0 && Date.now() - lastSnapshotAt > STALE_AFTER_MS;
    document.body.classList.toggle('stale', stale);
    if (stale) setConn('no updates', 'conn-bad');
  }, 1000);

  function render(snap) {
    const cluster = snap.cluster || {};
    const members = cluster.members || [];
    const sources = Array.isArray(snap.sources) ? snap.sources : [];
    const status = snap.status || {};
    renderHeader(snap, cluster);
    renderMembers(members, cluster.self || snap.node);
    sourcesTable.update(sources);
    updateOwnerFilter(members, sources);
    renderPlugins(Array.isArray(snap.plugins) ? snap.plugins : []);
    renderSinks(status, snap.time_ms);
    chart.push(snap.time_ms || Date.now(), sources, members);
    renderOverview(sources, members, status);
    eventLog.add(Array.isArray(snap.events) ? snap.events : []);
    updatePluginChoices(Array.isArray(snap.plugins) ? snap.plugins : []);
  }

  function renderHeader(snap, cluster) {
    const where = $('#where');
    const self = cluster.self || snap.node || '?';
    setText(where, 'on ' + self);
    setAttr(where, 'title', 'this page is served by node ' + self + ' (' + location.host + ')');
    setText($('#cluster-id'), cluster.cluster_id ? 'cluster ' + cluster.cluster_id : '');
  }

  // ---------------------------------------------------------------- members
  const membersBody = $('#members tbody');
  const memberRows = new Map();
  function renderMembers(members, selfId) {
    const seen = new Set();
    members.forEach((m, i) => {
      seen.add(m.id);
      let row = memberRows.get(m.id);
      if (!row) {
        const tr = el('tr', 'clickable');
        tr.dataset.id = m.id;
        const cells = [];
        for (let c = 0; c < 7; c++) { const td = el('td'); if (c >= 5) td.className = 'num'; tr.appendChild(td); cells.push(td); }
        const link = el('a');
        link.target = '_blank';
        link.rel = 'noopener';
        cells[2].appendChild(link);
        const badge = el('span', 'badge');
        cells[1].appendChild(badge);
        const name = el('span');
        const here = el('span', 'here');
        cells[0].append(name, here);
        row = { tr, cells, link, badge, name, here };
        memberRows.set(m.id, row);
        tr.addEventListener('click', (e) => {
          if (e.target.tagName === 'A') return;
          const owner = $('#owner-filter');
          owner.value = owner.value === m.id ? '' : m.id;
          sourcesTable.refilter();
        });
      }
      if (membersBody.children[i] !== row.tr) membersBody.insertBefore(row.tr, membersBody.children[i] || null);
      const isSelf = m.self === true || m.id === selfId;
      setText(row.name, m.id);
      setText(row.here, isSelf ? 'you are here' : '');
      row.tr.classList.toggle('self', isSelf);
      setText(row.badge, m.state);
      row.badge.className = 'badge state-' + m.state;
      setText(row.link, m.api ? m.api.replace(/^https?:\/\//, '') : '—');
      if (m.api) setAttr(row.link, 'href', m.api + '/');
      setText(row.cells[3], m.gossip || '—');
      setText(row.cells[4], m.version || '—');
      setText(row.cells[5], m.state === 'down' ? '—' : fmtDuration(m.uptime_s));
      setText(row.cells[6], fmtInt(m.sources_owned));
      row.tr.dataset.state = m.state;
    });
    for (const [id, row] of memberRows) {
      if (!seen.has(id)) { row.tr.remove(); memberRows.delete(id); }
    }
  }

  // ---------------------------------------------------------------- overview
  function renderOverview(sources, members, status) {
    let rate = 0, live = 0, failed = 0;
    for (const s of sources) {
      rate += s.events_per_sec || 0;
      if (s.state === 'live') live++;
      if (s.state === 'failed') failed++;
    }
    setText($('#ov-rate'), fmtRate(rate));
    setText($('#ov-sources'), fmtInt(live) + ' / ' + fmtInt(sources.length) + (failed ? ' (' + failed + ' failed)' : ''));
    $('#ov-sources').classList.toggle('warn', failed > 0);
    const alive = members.filter((m) => m.state === 'alive').length;
    setText($('#ov-members'), alive + ' / ' + members.length);
    $('#ov-members').classList.toggle('warn', alive < members.length);
    setText($('#ov-store'), fmtRate(sinkRates.store));
    setText($('#ov-subs'), fmtInt(status.fanout ? status.fanout.subscribers : null));
  }

  // ---------------------------------------------------------------- sources (virtualised)
  const sourcesTable = (function () {
    const body = $('#sources-body');
    const spacer = $('.vspacer', body);
    const rowsBox = $('.vrows', body);
    const empty = $('.vempty', body);
    const head = $('#sources .vhead');
    const filterInput = $('#source-filter');
    const stateSelect = $('#state-filter');
    const ownerSelect = $('#owner-filter');
    const NUMERIC = new Set(['events_per_sec', 'events', 'errors', 'reconnects', 'last_event_age_ms']);
    let all = [];
    let view = [];
    let sortKey = 'id';
    let sortDir = 1;
    const pool = [];
    let framePending = false;

    function makeRow() {
      const row = el('div', 'vrow');
      const cells = [];
      for (let i = 0; i < 12; i++) {
        const c = el('div');
        if (i >= 5 && i <= 9) c.className = 'num';
        row.appendChild(c);
        cells.push(c);
      }
      const badge = el('span', 'badge');
      cells[4].appendChild(badge);
      const pause = el('button', 'mini', 'pause');
      pause.type = 'button';
      pause.dataset.act = 'pause';
      const remove = el('button', 'mini danger', '✕');
      remove.type = 'button';
      remove.dataset.act = 'remove';
      remove.title = 'remove this source';
      cells[11].append(pause, remove);
      rowsBox.appendChild(row);
      return { row, cells, badge, pause };
    }

    function stateOf(s) { return s.paused ? 'paused' : s.state; }

    function fill(r, s) {
      if (r.row.dataset.id !== s.id) r.row.dataset.id = s.id;
      const c = r.cells;
      setText(c[0], s.id); setAttr(c[0], 'title', s.id);
      setText(c[1], s.plugin);
      setText(c[2], s.target); setAttr(c[2], 'title', s.target);
      const owners = s.owners && s.owners.length > 1 ? s.owners.join(', ') : (s.owner || '—');
      setText(c[3], owners); setAttr(c[3], 'title', owners);
      const st = stateOf(s);
      setText(r.badge, st);
      const cls = 'badge state-' + st;
      if (r.badge.className !== cls) r.badge.className = cls;
      setText(c[5], fmtRate(s.events_per_sec));
      setText(c[6], fmtInt(s.events));
      setText(c[7], fmtInt(s.errors));
      setText(c[8], fmtInt(s.reconnects));
      setText(c[9], fmtAge(s.last_event_age_ms));
      const said = s.last_error || (s.last_warning ? 'warning: ' + s.last_warning : '');
      setText(c[10], said);
      setAttr(c[10], 'title', said);
      c[7].classList.toggle('warn', s.errors > 0);
      setText(r.pause, s.paused ? 'resume' : 'pause');
      r.pause.dataset.act = s.paused ? 'resume' : 'pause';
    }

    function matches(s, terms, state, owner) {
      if (state && stateOf(s) !== state) return false;
      if (owner && s.owner !== owner && !(s.owners || []).includes(owner)) return false;
      if (!terms.length) return true;
      const hay = (s.id + ' ' + s.plugin + ' ' + s.target + ' ' + (s.owner || '') + ' ' + stateOf(s) + ' ' + (s.last_error || '') + ' ' + (s.last_warning || '')).toLowerCase();
      return terms.every((t) => hay.includes(t));
    }

    function compare(a, b) {
      let x = a[sortKey], y = b[sortKey];
      if (NUMERIC.has(sortKey)) {
        // Unknown values (no event yet) sort last whatever the direction.
        const nx = x === null || x === undefined, ny = y === null || y === undefined;
        if (nx || ny) return nx === ny ? 0 : nx ? 1 : -1;
        return (x - y) * sortDir || (a.id < b.id ? -1 : 1);
      }
      if (sortKey === 'state') { x = stateOf(a); y = stateOf(b); }
      x = x || ''; y = y || '';
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir || (a.id < b.id ? -1 : 1);
    }

    function refilter() {
      const terms = filterInput.value.toLowerCase().split(/\s+/).filter(Boolean);
      const state = stateSelect.value;
      const owner = ownerSelect.value;
      view = all.filter((s) => matches(s, terms, state, owner));
      view.sort(compare);
      const shown = view.length === all.length ? fmtInt(all.length) : fmtInt(view.length) + ' of ' + fmtInt(all.length);
      setText($('#sources-count'), shown + ' shown');
      empty.hidden = view.length > 0;
      spacer.style.height = view.length * ROW_HEIGHT + 'px';
      const height = Math.min(MAX_VISIBLE_ROWS, Math.max(3, view.length)) * ROW_HEIGHT + 'px';
      if (body.style.height !== height) body.style.height = height;
      paint();
    }

    function paint() {
      const height = body.clientHeight || 400;
      const first = Math.max(0, Math.floor(body.scrollTop / ROW_HEIGHT) - OVERSCAN);
      const count = Math.min(view.length - first, Math.ceil(height / ROW_HEIGHT) + 2 * OVERSCAN);
      while (pool.length < count) pool.push(makeRow());
      for (let i = 0; i < pool.length; i++) {
        const r = pool[i];
        if (i < count) {
          fill(r, view[first + i]);
          if (r.row.hidden) r.row.hidden = false;
        } else if (!r.row.hidden) {
          r.row.hidden = true;
        }
      }
      rowsBox.style.transform = 'translateY(' + first * ROW_HEIGHT + 'px)';
    }

    body.addEventListener('scroll', () => {
      if (framePending) return;
      framePending = true;
      requestAnimationFrame(() => { framePending = false; paint(); });
    }, { passive: true });
    window.addEventListener('resize', () => paint());
    filterInput.addEventListener('input', refilter);
    stateSelect.addEventListener('change', refilter);
    ownerSelect.addEventListener('change', refilter);

    head.addEventListener('click', (e) => {
      const key = e.target.dataset && e.target.dataset.sort;
      if (!key) return;
      if (key === sortKey) sortDir = -sortDir;
      else { sortKey = key; sortDir = NUMERIC.has(key) ? -1 : 1; }
      for (const h of head.children) {
        h.classList.toggle('sorted-asc', h.dataset.sort === sortKey && sortDir === 1);
        h.classList.toggle('sorted-desc', h.dataset.sort === sortKey && sortDir === -1);
      }
      refilter();
    });
    head.querySelector('[data-sort="id"]').classList.add('sorted-asc');

    rowsBox.addEventListener('click', (e) => {
      const button = e.target.closest('button[data-act]');
      if (!button) return;
      const id = button.closest('.vrow').dataset.id;
      const path = '/api/v1/sources/' + encodeURIComponent(id);
      const what = button.dataset.act;
      if (what === 'remove') {
        if (!confirm('Remove source ' + id + ' from the cluster?')) return;
        act('source ' + id + ' removed', () => api('DELETE', path));
      } else {
        act('source ' + id + (what === 'pause' ? ' paused' : ' resumed'), () => api('POST', path + '/' + what));
      }
    });

    return {
      update(sources) { all = sources; refilter(); },
      refilter,
    };
  })();

  function updateOwnerFilter(members, sources) {
    const select = $('#owner-filter');
    const owners = new Set(members.map((m) => m.id));
    for (const s of sources) if (s.owner) owners.add(s.owner);
    const want = [...owners].sort();
    const have = [...select.options].slice(1).map((o) => o.value);
    if (want.join('\n') === have.join('\n')) return;
    const current = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const id of want) select.add(new Option(id, id));
    select.value = want.includes(current) ? current : '';
  }

  // Add a source.
  const addForm = $('#add-source');
  $('#add-source-toggle').addEventListener('click', () => { addForm.hidden = !addForm.hidden; });
  $('#add-source-cancel').addEventListener('click', () => { addForm.hidden = true; });
  let connectorExamples = {};
  function updatePluginChoices(plugins) {
    const select = addForm.elements.plugin;
    const names = [];
    connectorExamples = {};
    for (const p of plugins) {
      const m = p.manifest || {};
      if (m.kind !== 'connector') continue;
      names.push(m.name);
      connectorExamples[m.name] = m.config_example;
    }
    names.sort();
    const have = [...select.options].map((o) => o.value);
    if (names.join('\n') === have.join('\n')) return;
    const current = select.value;
    select.innerHTML = '';
    for (const n of names) select.add(new Option(n, n));
    if (names.includes(current)) select.value = current;
  }
  addForm.elements.plugin.addEventListener('change', () => {
    const example = connectorExamples[addForm.elements.plugin.value];
    if (example !== undefined) addForm.elements.config.value = JSON.stringify(example, null, 1);
  });
  addForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = addForm.elements;
    let config, transforms;
    try {
      config = JSON.parse(f.config.value || '{}');
      transforms = f.transforms.value.trim() ? JSON.parse(f.transforms.value) : [];
    } catch (err) {
      toast('config and transforms must be JSON: ' + err.message, true);
      return;
    }
    const spec = { id: f.id.value.trim(), plugin: f.plugin.value, config, transforms };
    act('source ' + spec.id + ' added', async () => {
      await api('POST', '/api/v1/sources', JSON.stringify(spec));
      addForm.hidden = true;
    });
  });

  // ---------------------------------------------------------------- plugins
  const pluginsBody = $('#plugins tbody');
  const pluginRows = new Map();
  function renderPlugins(plugins) {
    const seen = new Set();
    plugins.forEach((p, i) => {
      const m = p.manifest || {};
      const key = m.digest;
      seen.add(key);
      let row = pluginRows.get(key);
      if (!row) {
        const tr = el('tr');
        const cells = [];
        for (let c = 0; c < 9; c++) { const td = el('td'); if (c === 4 || c >= 6) td.className = 'num'; tr.appendChild(td); cells.push(td); }
        cells[3].className = 'mono';
        row = { tr, cells };
        pluginRows.set(key, row);
      }
      if (pluginsBody.children[i] !== row.tr) pluginsBody.insertBefore(row.tr, pluginsBody.children[i] || null);
      const c = row.cells;
      const metrics = p.metrics || null;
      setText(c[0], m.name); setAttr(c[0], 'title', m.description || '');
      setText(c[1], m.version);
      setText(c[2], m.kind);
      setText(c[3], String(m.digest || '').slice(0, 10)); setAttr(c[3], 'title', 'sha256:' + (m.digest || ''));
      setText(c[4], m.size ? fmtBytes(m.size) : '—');
      const on = Array.isArray(p.loaded_on) ? p.loaded_on : [];
      setText(c[5], on.length ? on.join(', ') : 'not loaded');
      c[5].classList.toggle('muted', !on.length);
      setText(c[6], metrics ? fmtInt(metrics.calls) : '—');
      setText(c[7], metrics ? fmtInt(metrics.errors) : '—');
      const traps = metrics ? metrics.traps + (metrics.timeouts || 0) + (metrics.out_of_memory || 0) : null;
      setText(c[8], metrics ? fmtInt(traps) : '—');
      if (metrics) setAttr(c[8], 'title', metrics.traps + ' traps, ' + metrics.timeouts + ' timeouts, ' + metrics.out_of_memory + ' memory overruns, ' + metrics.instantiations + ' instantiations');
      c[8].classList.toggle('warn', traps > 0);
    });
    for (const [key, row] of pluginRows) {
      if (!seen.has(key)) { row.tr.remove(); pluginRows.delete(key); }
    }
  }

  $('#upload').addEventListener('submit', (e) => {
    e.preventDefault();
    const file = $('#upload-file').files[0];
    if (!file) { toast('choose a .wasm file first', true); return; }
    act(file.name + ' installed', async () => {
      const manifest = await api('POST', '/api/v1/plugins', file, 'application/wasm');
      toast('installed ' + manifest.name + ' ' + manifest.version + ' (' + manifest.kind + ')');
    });
  });

  // ---------------------------------------------------------------- sinks
  const sinkRates = { store: null, fanout: null };
  let sinkPrev = null;
  function renderSinks(status, timeMs) {
    const store = status.store || {};
    const fan = status.fanout || {};
    const node = status.node && status.node.id;
    setText($('#sinks-node'), node ? 'on ' + node : '');
    if (sinkPrev && timeMs > sinkPrev.time) {
      const dt = (timeMs - sinkPrev.time) / 1000;
      sinkRates.store = Math.max(0, (store.rows_written - sinkPrev.rows) / dt);
      sinkRates.fanout = Math.max(0, (fan.delivered - sinkPrev.delivered) / dt);
    }
    sinkPrev = { time: timeMs, rows: store.rows_written, delivered: fan.delivered };
    const connBadge = $('#store-conn');
    setText(connBadge, store.connected ? 'connected' : 'disconnected');
    connBadge.className = 'badge ' + (store.connected ? 'state-live' : 'state-failed');
    setText($('#store-kind'), store.kind || '—');
    setText($('#store-target'), store.target || '—');
    setAttr($('#store-target'), 'title', store.target || '');
    setText($('#store-rate'), fmtRate(sinkRates.store));
    setText($('#store-latency'), store.batches ? nf1.format(store.last_batch_ms) + ' ms' : '—');
    const bound = store.backlog_bound || 0;
    const fill = bound ? Math.min(1, (store.backlog || 0) / bound) : 0;
    const bar = $('#store-backlog-bar');
    bar.style.width = (fill * 100).toFixed(1) + '%';
    bar.classList.toggle('bar-hot', fill > 0.8);
    setText($('#store-backlog'), fmtInt(store.backlog) + ' / ' + fmtInt(bound));
    setText($('#store-rows'), fmtInt(store.rows_written));
    setText($('#store-dups'), fmtInt(store.duplicates_skipped));
    setText($('#store-errors'), fmtInt(store.write_errors) + ' write errors, ' + fmtInt(store.rows_rejected) + ' rows rejected, ' + fmtInt(store.reconnects) + ' reconnects');
    const dead = store.dead_letters || {};
    const deadTotal = Object.values(dead).reduce((a, b) => a + b, 0);
    setText($('#store-dead'), deadTotal
      ? Object.entries(dead).filter(([, n]) => n > 0).map(([stage, n]) => fmtInt(n) + ' ' + stage).join(', ')
      : 'none');
    $('#store-dead').classList.toggle('warn', deadTotal > 0);
    setText($('#store-last-error'), store.last_error || '—');
    setAttr($('#store-last-error'), 'title', store.last_error || '');
    setText($('#fan-subs'), fmtInt(fan.subscribers));
    setText($('#fan-lagging'), fmtInt(fan.lagging));
    $('#fan-lagging').classList.toggle('warn', fan.lagging > 0);
    setText($('#fan-rate'), fmtRate(sinkRates.fanout));
    setText($('#fan-dropped'), fmtInt(fan.dropped));
    setText($('#fan-kicked'), fmtInt(fan.disconnected_for_lag));
  }

  // ---------------------------------------------------------------- throughput chart
  const chart = (function () {
    const canvas = $('#chart');
    const legend = $('#legend');
    const samples = []; // { t, total, byOwner: Map }
    const colorOf = new Map();

    function colorFor(owner) {
      if (!colorOf.has(owner)) colorOf.set(owner, COLORS[(colorOf.size + 1) % COLORS.length]);
      return colorOf.get(owner);
    }

    function push(t, sources, members) {
      const byOwner = new Map();
      for (const m of members) byOwner.set(m.id, 0);
      let total = 0;
      for (const s of sources) {
        const r = s.events_per_sec || 0;
        total += r;
        const owner = s.owner || 'unowned';
        byOwner.set(owner, (byOwner.get(owner) || 0) + r);
      }
      samples.push({ t, total, byOwner });
      while (samples.length && samples[0].t < t - HISTORY_SECONDS * 1000) samples.shift();
      draw();
      renderLegend(total, byOwner);
    }

    function renderLegend(total, byOwner) {
      const items = [['cluster', total, '#1f2328']];
      for (const [owner, r] of [...byOwner].sort()) items.push([owner, r, colorFor(owner)]);
      while (legend.children.length > items.length) legend.lastChild.remove();
      items.forEach(([name, r, color], i) => {
        let item = legend.children[i];
        if (!item) {
          item = el('span', 'legend-item');
          item.append(el('span', 'swatch'), el('span', 'legend-name'), el('span', 'legend-value'));
          legend.appendChild(item);
        }
        item.children[0].style.background = color;
        setText(item.children[1], name);
        setText(item.children[2], fmtRate(r) + '/s');
      });
    }

    function niceMax(v) {
      if (v <= 0) return 1;
      const p = Math.pow(10, Math.floor(Math.log10(v)));
      for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
      return 10 * p;
    }

    function draw() {
      const ratio = window.devicePixelRatio || 1;
      const w = canvas.clientWidth, h = canvas.clientHeight;
      if (!w || !h) return;
      if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
        canvas.width = Math.round(w * ratio);
        canvas.height = Math.round(h * ratio);
      }
      const g = canvas.getContext('2d');
      g.setTransform(ratio, 0, 0, ratio, 0, 0);
      g.clearRect(0, 0, w, h);
      const left = 52, right = 8, top = 8, bottom = 20;
      const pw = w - left - right, ph = h - top - bottom;
      const now = samples.length ? samples[samples.length - 1].t : Date.now();
      // The window grows with the history, from one minute up to HISTORY_SECONDS.
      const have = samples.length ? now - samples[0].t : 0;
      const span = Math.min(HISTORY_SECONDS * 1000, Math.max(60000, Math.ceil(have / 60000) * 60000));
      const t0 = now - span;
      let max = 0;
      for (const s of samples) max = Math.max(max, s.total);
      max = niceMax(max * 1.1);
      const x = (t) => left + ((t - t0) / span) * pw;
      const y = (v) => top + ph - (v / max) * ph;
      // Grid and labels.
      g.font = '11px system-ui, sans-serif';
      g.fillStyle = '#6e7781';
      g.strokeStyle = '#e6e8eb';
      g.lineWidth = 1;
      g.textAlign = 'right';
      g.textBaseline = 'middle';
      for (let i = 0; i <= 4; i++) {
        const v = (max / 4) * i;
        const yy = Math.round(y(v)) + 0.5;
        g.beginPath(); g.moveTo(left, yy); g.lineTo(left + pw, yy); g.stroke();
        g.fillText(fmtRate(v), left - 6, yy);
      }
      g.textAlign = 'center';
      g.textBaseline = 'top';
      const step = span <= 60000 ? 10000 : span <= 180000 ? 30000 : 60000;
      for (let ago = 0; ago <= span; ago += step) {
        const xx = Math.round(x(now - ago)) + 0.5;
        g.beginPath(); g.moveTo(xx, top); g.lineTo(xx, top + ph); g.stroke();
        const label = ago === 0 ? 'now' : ago % 60000 === 0 ? '-' + ago / 60000 + 'm' : '-' + ago / 1000 + 's';
        g.fillText(label, Math.min(Math.max(xx, left + 10), left + pw - 12), top + ph + 4);
      }
      if (samples.length < 2) return;
      const line = (pick, color, width) => {
        g.strokeStyle = color;
        g.lineWidth = width;
        g.beginPath();
        let started = false;
        for (const s of samples) {
          const v = pick(s);
          if (v === undefined) { started = false; continue; }
          const px = x(s.t), py = y(v);
          if (started) g.lineTo(px, py); else { g.moveTo(px, py); started = true; }
        }
        g.stroke();
      };
      const owners = new Set();
      for (const s of samples) for (const k of s.byOwner.keys()) owners.add(k);
      g.lineJoin = 'round';
      for (const owner of [...owners].sort()) line((s) => s.byOwner.get(owner), colorFor(owner), 1.5);
      line((s) => s.total, '#1f2328', 2.5);
    }

    window.addEventListener('resize', draw);
    return { push, samples };
  })();

  // ---------------------------------------------------------------- event log
  const eventLog = (function () {
    const list = $('#events');
    const seen = new Set();
    return {
      reset() { seen.clear(); list.textContent = ''; },
      add(events) {
        for (const e of events) {
          const key = e.node + ':' + e.seq;
          if (seen.has(key)) continue;
          seen.add(key);
          const li = el('li', 'event event-' + e.kind);
          li.append(
            el('time', null, fmtTime(e.time_ms)),
            el('span', 'badge kind-' + e.kind, e.kind),
            el('span', 'event-node', e.node || ''),
            el('span', 'event-message', e.message || ''),
          );
          list.insertBefore(li, list.firstChild);
        }
        while (list.children.length > EVENTS_MAX) list.lastChild.remove();
        if (!list.children.length && !list.dataset.empty) list.dataset.empty = '1';
      },
    };
  })();

  // ---------------------------------------------------------------- live record tail
  const tail = (function () {
    const box = $('#tail');
    const form = $('#tail-form');
    const pauseButton = $('#tail-pause');
    const stateLabel = $('#tail-state');
    let socket = null;
    let paused = false;
    let pending = [];
    let notShown = 0;
    let retry = 0;
    let flushTimer = 0;

    const split = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);
    function filter() {
      const f = form.elements;
      return { sources: split(f.source.value), streams: split(f.stream.value), keys: split(f.key.value) };
    }

    function status(text) { setText(stateLabel, text); }

    function connect() {
      clearTimeout(retry);
      if (socket) socket.close();
      const f = filter();
      const q = new URLSearchParams();
      if (f.sources.length) q.set('source', f.sources.join(','));
      if (f.streams.length) q.set('stream', f.streams.join(','));
      if (f.keys.length) q.set('key', f.keys.join(','));
      const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + withToken('/ws' + (q.toString() ? '?' + q : ''));
      const ws = new WebSocket(url);
      socket = ws;
      status('connecting…');
      ws.addEventListener('message', (e) => {
        let msg;
        try { msg = JSON.parse(e.data); } catch (_) { return; }
        if (msg.type === 'subscribed') { status('live from ' + msg.node); return; }
        if (msg.type === 'lag') { notShown += msg.dropped; status('behind: the node dropped ' + fmtInt(msg.dropped_total) + ' records for this page'); return; }
        if (msg.type) return;
        dash.tailRecords += 1;
        pending.push(msg);
        if (pending.length > TAIL_MAX_LINES) { notShown += pending.length - TAIL_MAX_LINES; pending = pending.slice(-TAIL_MAX_LINES); }
        if (!flushTimer) flushTimer = setTimeout(flush, TAIL_FLUSH_MS);
      });
      ws.addEventListener('close', (e) => {
        if (socket !== ws) return;
        socket = null;
        if (paused) return;
        status('disconnected' + (e.reason ? ': ' + e.reason : '') + '; reconnecting…');
        retry = setTimeout(connect, 2000);
      });
    }

    function line(r) {
      const div = el('div', 'tail-line');
      let payload = '';
      try { payload = JSON.stringify(r.payload); } catch (_) { /* keep empty */ }
      div.append(
        el('time', null, fmtTime((r.ingest_time_us || 0) / 1000)),
        el('span', 'tail-source', r.source),
        el('span', 'tail-stream', r.stream),
        el('span', 'tail-key', r.key || ''),
        el('span', 'tail-payload', payload),
      );
      return div;
    }

    function flush() {
      flushTimer = 0;
      if (!pending.length) return;
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      const frag = document.createDocumentFragment();
      for (const r of pending) frag.appendChild(line(r));
      pending = [];
      box.appendChild(frag);
      while (box.children.length > TAIL_MAX_LINES) box.firstChild.remove();
      if (atBottom) box.scrollTop = box.scrollHeight;
      if (notShown) { status('live; ' + fmtInt(notShown) + ' records skipped to keep up'); }
    }

    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: 'subscribe', filter: filter() }));
      } else if (!paused) {
        connect();
      }
    });
    // Pausing closes the subscription: the node does no work for a page nobody reads.
    pauseButton.addEventListener('click', () => {
      paused = !paused;
      setText(pauseButton, paused ? 'Resume' : 'Pause');
      pauseButton.classList.toggle('active', paused);
      if (paused) {
        clearTimeout(retry);
        const ws = socket; socket = null;
        if (ws) ws.close();
        flush();
        status('paused');
      } else {
        connect();
      }
    });
    $('#tail-clear').addEventListener('click', () => { box.textContent = ''; pending = []; notShown = 0; });
    return { connect };
  })();

  connectLive();
  tail.connect();
})();
