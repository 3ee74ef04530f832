// whisperd's web page: upload or record audio, transcribe it through the public HTTP API
// (POST /transcribe, streamed as server-sent events when possible), show the segments as they
// arrive, play the audio with the current segment/word highlighted, download txt/srt/vtt/json.
// Plain JavaScript, no dependencies, nothing fetched from anywhere but this server.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const el = {
    fileInput: $('file-input'), dropZone: $('drop-zone'),
    recordBtn: $('record-btn'), stopBtn: $('stop-btn'), recTime: $('rec-time'),
    recLevel: $('rec-level'), micHint: $('mic-hint'),
    sourceInfo: $('source-info'), player: $('player'),
    model: $('model'), modelField: $('model-field'),
    language: $('language'), task: $('task'), wordTs: $('word-ts'), vad: $('vad'),
    apiKey: $('api-key'), apiKeyShow: $('api-key-show'), apiKeyClear: $('api-key-clear'),
    apiKeyHint: $('api-key-hint'),
    transcribeBtn: $('transcribe-btn'), cancelBtn: $('cancel-btn'),
    format: $('format'), downloadBtn: $('download-btn'), copyBtn: $('copy-btn'),
    status: $('status'), progressRow: $('progress-row'), progress: $('progress'),
    progressText: $('progress-text'), error: $('error'),
    transcript: $('transcript'), meta: $('meta'), serverInfo: $('server-info'),
  };

  // Whisper's languages (code, English name), as core/src/decode/languages.rs lists them.
  const LANGUAGES = [["en","English"],["zh","Chinese"],["de","German"],["es","Spanish"],["ru","Russian"],["ko","Korean"],["fr","French"],["ja","Japanese"],["pt","Portuguese"],["tr","Turkish"],["pl","Polish"],["ca","Catalan"],["nl","Dutch"],["ar","Arabic"],["sv","Swedish"],["it","Italian"],["id","Indonesian"],["hi","Hindi"],["fi","Finnish"],["vi","Vietnamese"],["he","Hebrew"],["uk","Ukrainian"],["el","Greek"],["ms","Malay"],["cs","Czech"],["ro","Romanian"],["da","Danish"],["hu","Hungarian"],["ta","Tamil"],["no","Norwegian"],["th","Thai"],["ur","Urdu"],["hr","Croatian"],["bg","Bulgarian"],["lt","Lithuanian"],["la","Latin"],["mi","Maori"],["ml","Malayalam"],["cy","Welsh"],["sk","Slovak"],["te","Telugu"],["fa","Persian"],["lv","Latvian"],["bn","Bengali"],["sr","Serbian"],["az","Azerbaijani"],["sl","Slovenian"],["kn","Kannada"],["et","Estonian"],["mk","Macedonian"],["br","Breton"],["eu","Basque"],["is","Icelandic"],["hy","Armenian"],["ne","Nepali"],["mn","Mongolian"],["bs","Bosnian"],["kk","Kazakh"],["sq","Albanian"],["sw","Swahili"],["gl","Galician"],["mr","Marathi"],["pa","Punjabi"],["si","Sinhala"],["km","Khmer"],["sn","Shona"],["yo","Yoruba"],["so","Somali"],["af","Afrikaans"],["oc","Occitan"],["ka","Georgian"],["be","Belarusian"],["tg","Tajik"],["sd","Sindhi"],["gu","Gujarati"],["am","Amharic"],["yi","Yiddish"],["lo","Lao"],["uz","Uzbek"],["fo","Faroese"],["ht","Haitian Creole"],["ps","Pashto"],["tk","Turkmen"],["nn","Nynorsk"],["mt","Maltese"],["sa","Sanskrit"],["lb","Luxembourgish"],["my","Myanmar"],["bo","Tibetan"],["tl","Tagalog"],["mg","Malagasy"],["as","Assamese"],["tt","Tatar"],["haw","Hawaiian"],["ln","Lingala"],["ha","Hausa"],["ba","Bashkir"],["jw","Javanese"],["su","Sundanese"],["yue","Cantonese"]];

  const KEY_STORE = 'whisperd.apiKey';
  const OPTS_STORE = 'whisperd.options';
  const MAX_RECORD_S = 15 * 60; // the raw samples live in memory until Stop

  const state = {
    source: null,      // {blob, name, url, kind: 'file' | 'recording'}
    duration: NaN,     // of the source, from the player (for progress)
    running: null,     // {ctrl: AbortController, started: ms}
    segments: [],      // segments shown (streamed, then the final ones)
    result: null,      // the final verbose_json answer
    words: [],         // [{start, end, el}] across all segments, in order
    segEls: [],
    activeSeg: -1,
    activeWord: -1,
    info: null,
    rec: null,         // the recording in progress
  };

  // ---------- small helpers ----------

  const store = {
    get(k) { try { return localStorage.getItem(k); } catch (_) { return null; } },
    set(k, v) { try { if (v === null || v === '') localStorage.removeItem(k); else localStorage.setItem(k, v); } catch (_) { /* storage off */ } },
  };

  function fmtTime(s) {
    if (!Number.isFinite(s)) return '–';
    s = Math.max(0, s);
    const tenths = Math.round(s * 10);
    const h = Math.floor(tenths / 36000);
    const m = Math.floor(tenths / 600) % 60;
    const sec = ((tenths % 600) / 10).toFixed(1).padStart(4, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function setStatus(text) { el.status.textContent = text; }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = '';
    el.apiKey.removeAttribute('aria-invalid');
  }

  function showErrorText(text) {
    el.error.textContent = text;
    el.error.hidden = false;
  }

  function showError(e) {
    if (e && e.status === 401) {
      showErrorText(`The server wants an API key (401: ${e.message}). ` +
        (el.apiKey.value ? 'The key in the "API key" field was refused: check it.' : 'Enter it in the "API key" field under Options.'));
      el.apiKey.setAttribute('aria-invalid', 'true');
      el.apiKey.focus();
      return;
    }
    let text;
    if (e && e.status) {
      text = `The server answered ${e.status}: ${e.message}`;
      if (e.param) text += ` (field: ${e.param})`;
      if (e.retryAfter) text += `. Try again in ${e.retryAfter} s.`;
    } else if (e instanceof TypeError) {
      text = `Could not reach the server: ${e.message}`;
    } else {
      text = (e && e.message) || String(e);
    }
    showErrorText(text);
  }

  // An Error from a non-2xx answer: whisperd's errors are {"error": {"message", "param", "code"}}.
  async function apiError(resp) {
    const body = await resp.text().catch(() => '');
    let message = '';
    let param = null;
    let code = null;
    try {
      const j = JSON.parse(body);
      const err = j && (j.error || j);
      message = typeof err === 'string' ? err : (err.message || '');
      param = err.param || null;
      code = err.code || null;
    } catch (_) { /* not JSON */ }
    if (!message) message = body.trim().slice(0, 300) || resp.statusText || 'error';
    const e = new Error(message);
    e.status = resp.status;
    e.param = param;
    e.code = code;
    e.retryAfter = resp.headers.get('Retry-After');
    return e;
  }

  function authHeaders() {
    const key = el.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // ---------- options, API key, server info ----------

  function fillLanguages(englishOnly) {
    const current = el.language.value || (loadOptions().language ?? '');
    el.language.textContent = '';
    const add = (value, label) => {
      const o = document.createElement('option');
      o.value = value;
      o.textContent = label;
      el.language.appendChild(o);
    };
    if (englishOnly) {
      add('en', 'English (this model is English-only)');
      el.language.value = 'en';
      return;
    }
    add('', 'Detect automatically');
    LANGUAGES.slice().sort((a, b) => a[1].localeCompare(b[1]))
      .forEach(([code, name]) => add(code, `${name} (${code})`));
    el.language.value = LANGUAGES.some(([c]) => c === current) ? current : '';
  }

  function loadOptions() {
    try { return JSON.parse(store.get(OPTS_STORE) || '{}') || {}; } catch (_) { return {}; }
  }

  function saveOptions() {
    store.set(OPTS_STORE, JSON.stringify({
      model: el.modelField.hidden ? undefined : el.model.value,
      language: el.language.disabled ? undefined : el.language.value,
      task: el.task.value,
      wordTimestamps: el.wordTs.checked,
      vad: el.vad.checked,
      format: el.format.value,
    }));
  }

  function restoreOptions() {
    const o = loadOptions();
    fillLanguages(false);
    if (o.language !== undefined) el.language.value = o.language;
    if (!el.language.value && o.language) el.language.value = '';
    if (o.task === 'translate' || o.task === 'transcribe') el.task.value = o.task;
    if (typeof o.wordTimestamps === 'boolean') el.wordTs.checked = o.wordTimestamps;
    if (typeof o.vad === 'boolean') el.vad.checked = o.vad;
    if (['txt', 'srt', 'vtt', 'json'].includes(o.format)) el.format.value = o.format;
    el.apiKey.value = store.get(KEY_STORE) || '';
  }

  async function loadInfo() {
    let info;
    try {
      const r = await fetch('/info', { headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error(String(r.status));
      info = await r.json();
    } catch (_) {
      return; // an older server, or not reachable yet: everything stays enabled
    }
    state.info = info;
    const parts = [`whisperd ${info.version || ''}`.trim()];
    if (info.model) {
      parts.push(`${info.model.name}${info.model.multilingual ? '' : ' (English-only)'}`);
    } else {
      parts.push('model loading…');
    }
    const n = info.numerics || {};
    parts.push([info.device, n.precision, n.instruction_set && `(${n.instruction_set})`].filter(Boolean).join(' '));
    if (info.features && info.features.auth) parts.push('API key required');
    el.serverInfo.textContent = parts.filter(Boolean).join(' · ');

    // Several models: a picker (by the names requests use); one model: nothing to choose.
    const models = Array.isArray(info.models) ? info.models : [];
    if (models.length > 1) {
      el.model.textContent = '';
      models.forEach((m, i) => {
        const o = document.createElement('option');
        o.value = m.name;
        const notes = [i === 0 ? 'default' : '', m.multilingual === false ? 'English-only' : '',
          m.state === 'unloaded' ? 'loads on first use' : ''].filter(Boolean);
        o.textContent = notes.length ? `${m.name} (${notes.join(', ')})` : m.name;
        el.model.appendChild(o);
      });
      const saved = loadOptions().model;
      if (models.some((m) => m.name === saved)) el.model.value = saved;
      el.modelField.hidden = false;
    }
    applyModel();
    if (info.features && info.features.vad === false) {
      el.vad.checked = false;
      el.vad.disabled = true;
      el.vad.parentElement.title = 'This server has no VAD model loaded';
    }
    if (info.features && info.features.auth) {
      el.apiKeyHint.textContent = 'This server requires an API key. It is kept in this browser only and sent as "Authorization: Bearer …".';
      el.apiKey.placeholder = 'required by this server';
    } else if (info.features) {
      el.apiKeyHint.textContent = 'This server does not ask for one. Kept in this browser only.';
    }
  }

  /** Language and task choices for the chosen model: an English-only one transcribes English. */
  function applyModel() {
    const info = state.info || {};
    const models = Array.isArray(info.models) ? info.models : [];
    const m = (!el.modelField.hidden && models.find((x) => x.name === el.model.value)) || info.model;
    const englishOnly = !!m && m.multilingual === false;
    const tr = el.task.querySelector('option[value="translate"]');
    if (englishOnly) {
      fillLanguages(true);
      el.language.disabled = true;
      el.task.value = 'transcribe';
      tr.disabled = true;
      tr.textContent = 'Translate to English (needs a multilingual model)';
    } else if (el.language.disabled) {
      el.language.disabled = false;
      fillLanguages(false);
      tr.disabled = false;
      tr.textContent = 'Translate to English';
    }
  }

  // ---------- audio source ----------

  function setSource(blob, name, kind) {
    if (state.running) cancel();
    if (state.source && state.source.url) URL.revokeObjectURL(state.source.url);
    const url = URL.createObjectURL(blob);
    state.source = { blob, name, url, kind };
    state.duration = NaN;
    el.player.src = url;
    el.player.hidden = false;
    el.sourceInfo.hidden = false;
    el.sourceInfo.textContent = `${kind === 'recording' ? 'Recording' : 'File'}: ${name} · ${fmtBytes(blob.size)}`;
    el.transcribeBtn.disabled = false;
    clearError();
  }

  el.player.addEventListener('loadedmetadata', () => {
    const d = el.player.duration;
    if (Number.isFinite(d) && d > 0 && state.source) {
      state.duration = d;
      el.sourceInfo.textContent = `${state.source.kind === 'recording' ? 'Recording' : 'File'}: ${state.source.name} · ${fmtBytes(state.source.blob.size)} · ${fmtTime(d)}`;
    }
  });

  el.fileInput.addEventListener('change', () => {
    const f = el.fileInput.files && el.fileInput.files[0];
    if (!f) return;
    setSource(f, f.name, 'file');
    setStatus(`Ready: press Transcribe.`);
  });

  el.dropZone.addEventListener('dragover', (e) => {
    e.preventDefault();
    el.dropZone.classList.add('dragging');
  });
  el.dropZone.addEventListener('dragleave', () => el.dropZone.classList.remove('dragging'));
  el.dropZone.addEventListener('drop', (e) => {
    e.preventDefault();
    el.dropZone.classList.remove('dragging');
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) {
      setSource(f, f.name, 'file');
      setStatus('Ready: press Transcribe.');
    }
  });

  // ---------- transcription ----------

  function formData(stream) {
    const fd = new FormData();
    fd.append('file', state.source.blob, state.source.name);
    if (!el.modelField.hidden) fd.append('model', el.model.value);
    const lang = el.language.value;
    if (lang) fd.append('language', lang);
    fd.append('task', el.task.value);
    fd.append('response_format', 'verbose_json');
    if (el.wordTs.checked) fd.append('word_timestamps', 'true');
    if (!el.vad.disabled) fd.append('vad', el.vad.checked ? 'true' : 'false');
    if (stream) fd.append('stream', 'true');
    return fd;
  }

  function setBusy(busy) {
    el.transcribeBtn.disabled = busy || !state.source;
    el.cancelBtn.hidden = !busy;
    el.progressRow.hidden = !busy;
    el.transcript.setAttribute('aria-busy', busy ? 'true' : 'false');
    if (busy) {
      el.downloadBtn.disabled = true;
      el.copyBtn.disabled = true;
    }
  }

  function updateProgress() {
    const run = state.running;
    if (!run) return;
    const elapsed = ((performance.now() - run.started) / 1000).toFixed(1);
    const n = state.segments.length;
    const reached = n ? state.segments[n - 1].end : 0;
    const total = state.duration;
    if (n && Number.isFinite(total) && total > 0) {
      el.progress.value = Math.min(1, reached / total);
    } else {
      el.progress.removeAttribute('value'); // indeterminate
    }
    const seg = `${n} segment${n === 1 ? '' : 's'}`;
    const where = n ? ` · up to ${fmtTime(reached)}${Number.isFinite(total) ? ` of ${fmtTime(total)}` : ''}` : '';
    el.progressText.textContent = `${seg}${where} · ${elapsed} s`;
  }

  async function transcribe() {
    if (!state.source || state.running) return;
    clearError();
    resetTranscript();
    const ctrl = new AbortController();
    const run = { ctrl, started: performance.now(), timer: 0 };
    state.running = run;
    setBusy(true);
    setStatus(`Uploading ${state.source.name} and waiting for the first segment…`);
    run.timer = setInterval(updateProgress, 250);
    updateProgress();
    // bring the transcript into view if it is below the fold
    const card = $('result-card').getBoundingClientRect();
    if (card.top > window.innerHeight - 160) {
      const calm = window.matchMedia && window.matchMedia('(prefers-reduced-motion: reduce)').matches;
      $('result-card').scrollIntoView({ behavior: calm ? 'auto' : 'smooth', block: 'start' });
    }
    try {
      let result;
      let how = 'streamed';
      try {
        result = await requestStreamed(ctrl.signal);
      } catch (e) {
        if (!e.retryPlain || ctrl.signal.aborted) throw e;
        how = 'in one request';
        setStatus(`Streaming did not work (${e.message}); transcribing in one request…`);
        state.segments = [];
        renderSegments();
        result = await requestPlain(ctrl.signal);
      }
      if (state.running !== run) return;
      finish(result, (performance.now() - run.started) / 1000, how);
    } catch (e) {
      if (state.running !== run) return;
      if (e && e.name === 'AbortError') {
        setStatus('Cancelled.');
      } else {
        setStatus('Transcription failed.');
        showError(e);
      }
    } finally {
      clearInterval(run.timer);
      if (state.running === run) {
        state.running = null;
        setBusy(false);
      }
    }
  }

  function cancel() {
    const run = state.running;
    if (!run) return;
    clearInterval(run.timer);
    run.ctrl.abort();
    state.running = null;
    setBusy(false);
    setStatus('Cancelled.');
  }

  // POST /transcribe with stream=true: `event: segment` per segment, then `event: transcript`
  // (verbose_json). The server may also answer whole (a cached result): plain JSON then.
  async function requestStreamed(signal) {
    let resp;
    try {
      resp = await fetch('/transcribe', {
        method: 'POST', body: formData(true), headers: authHeaders(), signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw Object.assign(new Error(e.message || 'network error'), { retryPlain: true });
    }
    if (!resp.ok) {
      const e = await apiError(resp);
      // a server (or proxy) that cannot stream this request: ask for the whole answer instead
      if (e.status === 400 && e.param === 'stream') e.retryPlain = true;
      throw e;
    }
    const type = resp.headers.get('Content-Type') || '';
    if (!type.includes('text/event-stream')) return resp.json();
    setStatus('Transcribing…');

    let final = null;
    let buffer = '';
    const handle = (block) => {
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const name = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? '' : line.slice(i + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (name === 'event') event = value;
        else if (name === 'data') data.push(value);
      }
      if (!data.length) return;
      const payload = JSON.parse(data.join('\n'));
      if (event === 'segment') {
        addSegment(payload);
      } else if (event === 'transcript') {
        final = payload;
      } else if (event === 'error') {
        const err = payload.error || payload;
        throw Object.assign(new Error(`The transcription failed: ${err.message || 'unknown error'}`), { fromServer: true });
      }
    };
    const drain = (flush) => {
      buffer = buffer.replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        handle(block);
      }
      if (flush && buffer.trim()) { handle(buffer); buffer = ''; }
    };

    if (!resp.body || typeof resp.body.getReader !== 'function') {
      buffer = await resp.text();
      drain(true);
    } else {
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          drain(false);
        }
        buffer += decoder.decode();
        drain(true);
      } catch (e) {
        if (e.name === 'AbortError' || e.fromServer) throw e;
        if (e instanceof SyntaxError) throw new Error(`a bad event from the server: ${e.message}`);
        throw Object.assign(new Error(`the stream broke off: ${e.message}`), { retryPlain: true });
      }
    }
    if (!final) throw Object.assign(new Error('the stream ended before the transcript'), { retryPlain: true });
    return final;
  }

  async function requestPlain(signal) {
    const resp = await fetch('/transcribe', {
      method: 'POST', body: formData(false), headers: authHeaders(), signal,
    });
    if (!resp.ok) throw await apiError(resp);
    return resp.json();
  }

  function finish(result, seconds, how) {
    state.result = result;
    el.transcript.dataset.source = state.source ? state.source.name : '';
    state.segments = (result.segments || []).slice();
    renderSegments();
    el.progress.value = 1;
    const n = state.segments.length;
    setStatus(n
      ? `Done: ${n} segment${n === 1 ? '' : 's'} in ${seconds.toFixed(1)} s (${how}).`
      : `Done in ${seconds.toFixed(1)} s: no speech found.`);
    const meta = [];
    const lang = String(result.language || '');
    if (lang) meta.push(`Language: ${lang.charAt(0).toUpperCase()}${lang.slice(1)}`);
    if (result.task === 'translate') meta.push('translated to English');
    if (Number.isFinite(result.duration)) meta.push(`${result.duration.toFixed(1)} s of audio`);
    const sp = result.speech;
    if (sp && sp.vad && Number.isFinite(sp.speech_duration)) {
      meta.push(`VAD kept ${sp.speech_duration.toFixed(1)} s of speech, skipped ${Number(sp.skipped_duration || 0).toFixed(1)} s`);
    }
    el.meta.textContent = meta.join(' · ');
    el.meta.hidden = !meta.length;
    el.downloadBtn.disabled = false;
    el.copyBtn.disabled = !result.text;
  }

  // ---------- transcript view ----------

  function resetTranscript() {
    state.result = null;
    delete el.transcript.dataset.source;
    state.segments = [];
    el.meta.hidden = true;
    el.downloadBtn.disabled = true;
    el.copyBtn.disabled = true;
    el.progress.value = 0;
    renderSegments();
  }

  function segmentNode(seg, index) {
    const div = document.createElement('div');
    div.className = 'seg';
    div.dataset.index = String(index);
    const time = document.createElement('button');
    time.type = 'button';
    time.className = 'seg-time';
    time.dataset.start = String(seg.start);
    time.textContent = `${fmtTime(seg.start)} – ${fmtTime(seg.end)}`;
    time.setAttribute('aria-label', `Play from ${fmtTime(seg.start)}`);
    const text = document.createElement('p');
    text.className = 'seg-text';
    if (Array.isArray(seg.words) && seg.words.length) {
      seg.words.forEach((w, i) => {
        // the word's leading space stays outside its highlight (and before the first word: none)
        const word = String(w.word || '');
        const body = word.trimStart();
        if (i > 0 && body.length < word.length) text.appendChild(document.createTextNode(' '));
        const span = document.createElement('span');
        span.className = 'w';
        span.dataset.start = String(w.start);
        span.textContent = body;
        if (typeof w.probability === 'number') span.title = `${fmtTime(w.start)}–${fmtTime(w.end)} · p=${w.probability.toFixed(2)}`;
        if (typeof w.probability === 'number' && w.probability < 0.5) span.classList.add('unsure');
        text.appendChild(span);
        state.words.push({ start: w.start, end: w.end, el: span });
      });
    } else {
      text.textContent = (seg.text || '').trim();
    }
    div.append(time, text);
    return div;
  }

  function renderSegments() {
    el.transcript.textContent = '';
    state.words = [];
    state.segEls = [];
    state.activeSeg = -1;
    state.activeWord = -1;
    if (!state.segments.length) {
      if (!state.running) {
        const p = document.createElement('p');
        p.className = 'empty';
        p.textContent = state.result
          ? 'No speech was found in this audio.'
          : 'Upload or record audio, then transcribe it. The text appears here as it is decoded; click any line or word to play the audio from there.';
        el.transcript.appendChild(p);
      }
      return;
    }
    const frag = document.createDocumentFragment();
    state.segments.forEach((s, i) => {
      const node = segmentNode(s, i);
      state.segEls.push(node);
      frag.appendChild(node);
    });
    el.transcript.appendChild(frag);
    syncHighlight();
  }

  function addSegment(seg) {
    if (!state.segments.length) el.transcript.textContent = '';
    state.segments.push(seg);
    const node = segmentNode(seg, state.segments.length - 1);
    state.segEls.push(node);
    el.transcript.appendChild(node);
    el.transcript.scrollTop = el.transcript.scrollHeight;
    setStatus(`Transcribing… ${state.segments.length} segment${state.segments.length === 1 ? '' : 's'} so far.`);
    updateProgress();
  }

  // Click a word or a line: play from there (not when the click ends a text selection).
  el.transcript.addEventListener('click', (e) => {
    const sel = window.getSelection && window.getSelection();
    if (sel && String(sel).length > 0 && !e.target.closest('button')) return;
    const target = e.target.closest('.w') || e.target.closest('.seg-time');
    let start = target ? Number(target.dataset.start) : NaN;
    if (!Number.isFinite(start)) {
      const seg = e.target.closest('.seg');
      if (!seg) return;
      start = Number(state.segments[Number(seg.dataset.index)].start);
    }
    seek(start);
  });

  function seek(t) {
    if (!state.source || !Number.isFinite(t)) return;
    el.player.currentTime = Math.max(0, t);
    const p = el.player.play();
    if (p && p.catch) p.catch(() => { /* autoplay refused: the position is still set */ });
    syncHighlight();
  }

  // Index of the last item whose start <= t (items sorted by start), or -1.
  function lastStartingBefore(items, t) {
    let lo = 0;
    let hi = items.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].start <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  }

  function keepVisible(node) {
    const box = el.transcript;
    const top = node.offsetTop;
    const bottom = top + node.offsetHeight;
    if (top < box.scrollTop || bottom > box.scrollTop + box.clientHeight) {
      box.scrollTo({ top: Math.max(0, top - box.clientHeight / 3), behavior: 'smooth' });
    }
  }

  function syncHighlight() {
    const t = el.player.currentTime;
    const playing = !el.player.paused;
    let si = lastStartingBefore(state.segments, t);
    if (si >= 0 && t > state.segments[si].end + 0.05) si = -1;
    if (si !== state.activeSeg) {
      if (state.segEls[state.activeSeg]) {
        state.segEls[state.activeSeg].classList.remove('active');
        state.segEls[state.activeSeg].removeAttribute('aria-current');
      }
      state.activeSeg = si;
      const node = state.segEls[si];
      if (node) {
        node.classList.add('active');
        node.setAttribute('aria-current', 'true');
        if (playing) keepVisible(node);
      }
    }
    let wi = lastStartingBefore(state.words, t);
    if (wi >= 0 && t > state.words[wi].end + 0.05) wi = -1;
    if (wi !== state.activeWord) {
      if (state.words[state.activeWord]) state.words[state.activeWord].el.classList.remove('active');
      state.activeWord = wi;
      if (state.words[wi]) state.words[wi].el.classList.add('active');
    }
  }

  let rafId = 0;
  function tick() {
    syncHighlight();
    rafId = el.player.paused ? 0 : requestAnimationFrame(tick);
  }
  el.player.addEventListener('play', () => { if (!rafId) rafId = requestAnimationFrame(tick); });
  el.player.addEventListener('seeked', syncHighlight);
  el.player.addEventListener('timeupdate', syncHighlight);

  // ---------- downloads ----------

  function ms(seconds) { return Math.round(Math.max(0, Number(seconds) || 0) * 1000); }

  function stamp(seconds, sep) {
    const t = ms(seconds);
    const p = (n, w) => String(n).padStart(w, '0');
    return `${p(Math.floor(t / 3600000), 2)}:${p(Math.floor(t / 60000) % 60, 2)}:${p(Math.floor(t / 1000) % 60, 2)}${sep}${p(t % 1000, 3)}`;
  }

  // One cue per segment, as whisperd's own srt/vtt without subtitle layout options.
  function cues() {
    return (state.result.segments || [])
      .map((s) => ({ start: s.start, end: s.end, text: String(s.text || '').trim().replace(/-->/g, '->') }))
      .filter((c) => c.text);
  }

  function render(format) {
    const r = state.result;
    switch (format) {
      case 'txt': return `${String(r.text || '').trim()}\n`;
      case 'srt': return cues().map((c, i) => `${i + 1}\n${stamp(c.start, ',')} --> ${stamp(c.end, ',')}\n${c.text}\n\n`).join('');
      case 'vtt': return `WEBVTT\n\n${cues().map((c) => `${stamp(c.start, '.')} --> ${stamp(c.end, '.')}\n${c.text}\n\n`).join('')}`;
      default: return `${JSON.stringify(r, null, 2)}\n`;
    }
  }

  const MIME = {
    txt: 'text/plain;charset=utf-8',
    srt: 'application/x-subrip;charset=utf-8',
    vtt: 'text/vtt;charset=utf-8',
    json: 'application/json',
  };

  function baseName() {
    const name = state.source ? state.source.name : 'transcript';
    return name.replace(/\.[^./\\]{1,5}$/, '') || 'transcript';
  }

  function download() {
    if (!state.result) return;
    const format = el.format.value;
    const blob = new Blob([render(format)], { type: MIME[format] });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${baseName()}.${format}`;
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 10000);
    setStatus(`Saved ${a.download}.`);
  }

  async function copyText() {
    if (!state.result) return;
    const text = String(state.result.text || '').trim();
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const ta = document.createElement('textarea');
      ta.value = text;
      ta.setAttribute('readonly', '');
      ta.style.position = 'fixed';
      ta.style.opacity = '0';
      document.body.appendChild(ta);
      ta.select();
      try { document.execCommand('copy'); } catch (__) { /* nothing more to try */ }
      ta.remove();
    }
    setStatus('Copied the text.');
  }

  // ---------- microphone ----------

  function micUnavailableReason() {
    if (!window.isSecureContext) {
      return `Recording needs a secure page: open this page over https, or as http://localhost (it is ${location.origin}).`;
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return 'This browser cannot record audio here (no getUserMedia).';
    }
    if (!(window.AudioContext || window.webkitAudioContext)) {
      return 'This browser has no Web Audio: recording is not possible.';
    }
    return null;
  }

  async function startRecording() {
    if (state.rec) return;
    clearError();
    const why = micUnavailableReason();
    if (why) { showErrorText(why); return; }
    el.recordBtn.disabled = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (e) {
      el.recordBtn.disabled = false;
      const name = e && e.name;
      showErrorText(name === 'NotAllowedError' || name === 'SecurityError'
        ? 'Microphone access was refused: allow it in the browser (the icon in the address bar) and try again.'
        : name === 'NotFoundError' ? 'No microphone was found.'
          : `Could not open the microphone: ${e.message || name}`);
      return;
    }
    const AC = window.AudioContext || window.webkitAudioContext;
    const ctx = new AC();
    const rec = { ctx, stream, chunks: [], length: 0, level: 0, started: performance.now(), node: null, timer: 0 };
    state.rec = rec;
    const push = (block) => {
      if (state.rec !== rec) return;
      rec.chunks.push(block);
      rec.length += block.length;
      let peak = 0;
      for (let i = 0; i < block.length; i += 4) peak = Math.max(peak, Math.abs(block[i]));
      rec.level = Math.max(peak, rec.level * 0.9);
    };
    try {
      if (ctx.state === 'suspended') await ctx.resume();
      const src = ctx.createMediaStreamSource(stream);
      const mute = ctx.createGain();
      mute.gain.value = 0;
      let node = null;
      if (ctx.audioWorklet && typeof AudioWorkletNode === 'function') {
        try {
          // A file of its own, so the page's Content-Security-Policy needs no blob: scripts.
          await ctx.audioWorklet.addModule('/ui/capture-worklet.js');
          node = new AudioWorkletNode(ctx, 'whisperd-capture', {
            numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
            channelCount: 1, channelCountMode: 'explicit', channelInterpretation: 'speakers',
          });
          node.port.onmessage = (m) => push(m.data);
        } catch (_) {
          node = null; // no worklets here: the script processor below
        }
      }
      if (!node) {
        node = ctx.createScriptProcessor(4096, 1, 1);
        node.onaudioprocess = (ev) => push(new Float32Array(ev.inputBuffer.getChannelData(0)));
      }
      src.connect(node);
      node.connect(mute);
      mute.connect(ctx.destination);
      rec.node = node;
      rec.src = src;
    } catch (e) {
      abortRecording();
      showErrorText(`Could not start recording: ${e.message || e}`);
      return;
    }
    rec.timer = setInterval(() => {
      const s = (performance.now() - rec.started) / 1000;
      el.recTime.textContent = fmtTime(s).replace(/\.\d$/, '');
      el.recLevel.style.width = `${Math.min(100, Math.round(Math.sqrt(rec.level) * 100))}%`;
      rec.level *= 0.8;
      if (s >= MAX_RECORD_S) stopRecording();
    }, 100);
    document.body.classList.add('recording');
    el.stopBtn.disabled = false;
    el.recordBtn.disabled = true;
    el.recordBtn.setAttribute('aria-pressed', 'true');
    setStatus('Recording… press Stop to transcribe.');
    el.stopBtn.focus();
  }

  function teardown(rec) {
    clearInterval(rec.timer);
    try { rec.stream.getTracks().forEach((t) => t.stop()); } catch (_) { /* gone */ }
    try { if (rec.src) rec.src.disconnect(); if (rec.node) rec.node.disconnect(); } catch (_) { /* gone */ }
    try { rec.ctx.close(); } catch (_) { /* gone */ }
    document.body.classList.remove('recording');
    el.recLevel.style.width = '0';
    el.stopBtn.disabled = true;
    el.recordBtn.disabled = false;
    el.recordBtn.setAttribute('aria-pressed', 'false');
  }

  function abortRecording() {
    const rec = state.rec;
    if (!rec) return;
    state.rec = null;
    teardown(rec);
  }

  async function stopRecording() {
    const rec = state.rec;
    if (!rec) return;
    state.rec = null;
    const rate = rec.ctx.sampleRate;
    teardown(rec);
    if (rec.length < rate * 0.1) {
      showErrorText('The recording is empty: no audio came from the microphone.');
      return;
    }
    const samples = new Float32Array(rec.length);
    let off = 0;
    for (const c of rec.chunks) { samples.set(c, off); off += c.length; }
    rec.chunks = [];
    setStatus('Preparing the recording…');
    let pcm = samples;
    let outRate = rate;
    if (rate > 16000) {
      const r = await resample(samples, rate, 16000);
      if (r) { pcm = r; outRate = 16000; }
    }
    const wav = encodeWav(pcm, outRate);
    const d = new Date();
    const p = (n) => String(n).padStart(2, '0');
    const name = `recording-${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}.wav`;
    setSource(wav, name, 'recording');
    transcribe();
  }

  // The browser's own resampler (anti-aliased), through an offline context; null if it fails.
  async function resample(data, from, to) {
    try {
      const OAC = window.OfflineAudioContext || window.webkitOfflineAudioContext;
      const frames = Math.max(1, Math.ceil((data.length * to) / from));
      const oac = new OAC(1, frames, to);
      const buf = oac.createBuffer(1, data.length, from);
      buf.getChannelData(0).set(data);
      const src = oac.createBufferSource();
      src.buffer = buf;
      src.connect(oac.destination);
      src.start();
      const out = await oac.startRendering();
      return out.getChannelData(0);
    } catch (_) {
      return null;
    }
  }

  // 16-bit PCM mono WAV.
  function encodeWav(samples, rate) {
    const buf = new ArrayBuffer(44 + samples.length * 2);
    const v = new DataView(buf);
    const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
    str(0, 'RIFF');
    v.setUint32(4, 36 + samples.length * 2, true);
    str(8, 'WAVE');
    str(12, 'fmt ');
    v.setUint32(16, 16, true);
    v.setUint16(20, 1, true);        // PCM
    v.setUint16(22, 1, true);        // mono
    v.setUint32(24, rate, true);
    v.setUint32(28, rate * 2, true); // bytes per second
    v.setUint16(32, 2, true);        // block align
    v.setUint16(34, 16, true);       // bits per sample
    str(36, 'data');
    v.setUint32(40, samples.length * 2, true);
    let o = 44;
    for (let i = 0; i < samples.length; i++, o += 2) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      v.setInt16(o, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Blob([buf], { type: 'audio/wav' });
  }

  // ---------- wiring ----------

  el.transcribeBtn.addEventListener('click', transcribe);
  el.cancelBtn.addEventListener('click', cancel);
  el.downloadBtn.addEventListener('click', download);
  el.copyBtn.addEventListener('click', copyText);
  el.recordBtn.addEventListener('click', startRecording);
  el.stopBtn.addEventListener('click', stopRecording);
  el.model.addEventListener('change', () => { applyModel(); saveOptions(); });
  [el.language, el.task, el.wordTs, el.vad, el.format].forEach((x) => x.addEventListener('change', saveOptions));
  $('api-key-form').addEventListener('submit', (e) => e.preventDefault()); // Enter in the key field
  el.apiKey.addEventListener('input', () => {
    store.set(KEY_STORE, el.apiKey.value.trim());
    el.apiKey.removeAttribute('aria-invalid');
  });
  el.apiKeyShow.addEventListener('click', () => {
    const show = el.apiKey.type === 'password';
    el.apiKey.type = show ? 'text' : 'password';
    el.apiKeyShow.textContent = show ? 'Hide' : 'Show';
    el.apiKeyShow.setAttribute('aria-pressed', String(show));
  });
  el.apiKeyClear.addEventListener('click', () => {
    el.apiKey.value = '';
    store.set(KEY_STORE, null);
    el.apiKey.focus();
  });

  restoreOptions();
  const micWhy = micUnavailableReason();
  if (micWhy) {
    el.recordBtn.disabled = true;
    el.micHint.textContent = micWhy;
    el.micHint.classList.add('warn');
  }
  el.recordBtn.setAttribute('aria-pressed', 'false');
  loadInfo();
})();
