// chat-server playground: plain JavaScript, no build step, no external resources.
// REST for accounts, conversations, the event log, agents and knowledge bases; the WebSocket
// (/api/ws) for streaming answers, their tool calls, and documents' ingestion progress.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    authView: $('auth-view'), authForm: $('auth-form'), email: $('auth-email'),
    password: $('auth-password'), name: $('auth-name'), authError: $('auth-error'),
    signup: $('signup-button'), login: $('login-button'),
    chatView: $('chat-view'), userLabel: $('user-label'), logout: $('logout-button'),
    wsStatus: $('ws-status'),
    newConversation: $('new-conversation'), conversationList: $('conversation-list'),
    conversationEmpty: $('conversation-empty'),
    title: $('conversation-title'), meta: $('conversation-meta'), agentBadge: $('conversation-agent'),
    agentSelect: $('agent-select'),
    messages: $('messages'), chatError: $('chat-error'),
    composer: $('composer'), input: $('composer-input'), send: $('send-button'), cancel: $('cancel-button'),
    eventList: $('event-list'), eventsEmpty: $('events-empty'), eventsRefresh: $('events-refresh'),
    tabs: Array.from(document.querySelectorAll('.tabs [data-tab]')),
    kbForm: $('kb-form'), kbName: $('kb-name'), kbDescription: $('kb-description'), kbError: $('kb-error'),
    kbCreate: $('kb-create'), kbList: $('kb-list'), kbEmpty: $('kb-empty'),
    agentList: $('agent-list'), agentsEmpty: $('agents-empty'), agentForm: $('agent-form'),
    agentName: $('agent-name'), agentInstructions: $('agent-instructions'),
    agentKnowledgeBases: $('agent-knowledge-bases'), agentError: $('agent-error'), agentCreate: $('agent-create'),
    messageTemplate: $('message-template'),
  };

  const STORAGE_KEY = 'chat-server.playground.session';
  const state = {
    session: null,            // {accessToken, refreshToken, user}
    conversations: [],
    current: null,            // id of the open conversation (null: a new one on next send)
    socket: null,
    socketReady: false,
    reconnectDelay: 500,
    reconnectTimer: null,
    outbox: [],               // frames waiting for the socket to be ready
    streams: new Map(),       // messageId -> {conversationId, nextIndex, content, el, calls, toolSeq}
    pendingSend: null,        // {clientMessageId, conversationId, el} until its stream_start
    agents: [],               // GET /api/agents
    currentAgentId: null,     // the agent bound to the open conversation
    pendingAgentId: '',       // with no conversation open: the agent the next one is created with
    knowledgeBases: [],       // GET /api/knowledge-bases
    documents: new Map(),     // documentId -> Document (with `live` once a frame updated it)
    documentFrames: new Map(),// documentId -> the latest document_status of a document not listed yet
    documentLoads: new Map(), // knowledgeBaseId -> {again, done}: the GET of its documents in flight
    answers: new Map(),       // assistant messageId -> {rating, ratingSeq, validation, busy}
    eventsLoad: 0,            // the latest GET of the event log: only its answer is shown
  };

  // ---------- session ----------
  function loadSession() {
    try { return JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null'); } catch { return null; }
  }
  function saveSession(session) {
    state.session = session;
    if (session) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(STORAGE_KEY);
  }

  // ---------- REST ----------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
    }
  }

  async function request(method, path, body, { auth = true, retry = true } = {}) {
    const headers = { accept: 'application/json' };
    // A FormData body is multipart: the browser writes its content type with the boundary.
    const form = body instanceof FormData;
    if (body !== undefined && !form) headers['content-type'] = 'application/json';
    if (auth && state.session) headers.authorization = `Bearer ${state.session.accessToken}`;
    const payload = body === undefined ? undefined : form ? body : JSON.stringify(body);
    const res = await fetch(path, { method, headers, body: payload });
    if (res.status === 401 && auth && retry && state.session && state.session.refreshToken) {
      if (await refreshTokens()) return request(method, path, body, { auth, retry: false });
      signOut('Your session expired. Please log in again.');
    }
    const text = await res.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch { data = { message: text }; } }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }

  let refreshing = null;
  function refreshTokens() {
    if (!refreshing) {
      refreshing = (async () => {
        try {
          const tokens = await request('POST', '/api/auth/refresh',
            { refreshToken: state.session.refreshToken }, { auth: false, retry: false });
          saveSession({ accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, user: tokens.user });
          return true;
        } catch {
          return false;
        } finally {
          setTimeout(() => { refreshing = null; }, 0);
        }
      })();
    }
    return refreshing;
  }

  // ---------- auth view ----------
  function showAuthError(message) {
    els.authError.textContent = message;
    els.authError.hidden = !message;
  }

  async function authenticate(kind) {
    showAuthError('');
    const email = els.email.value.trim();
    const password = els.password.value;
    if (!email || !password) { showAuthError('Enter an email and a password.'); return; }
    const body = kind === 'register'
      ? { email, password, ...(els.name.value.trim() ? { displayName: els.name.value.trim() } : {}) }
      : { email, password };
    els.signup.disabled = els.login.disabled = true;
    try {
      const tokens = await request('POST', `/api/auth/${kind}`, body, { auth: false });
      saveSession({ accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, user: tokens.user });
      els.password.value = '';
      enterApp();
    } catch (err) {
      showAuthError(err.message);
    } finally {
      els.signup.disabled = els.login.disabled = false;
    }
  }

  function signOut(message) {
    const session = state.session;
    if (session && session.refreshToken && !message) {
      request('POST', '/api/auth/logout', { refreshToken: session.refreshToken }, { retry: false }).catch(() => {});
    }
    saveSession(null);
    closeSocket();
    state.conversations = [];
    state.current = null;
    state.streams.clear();
    state.pendingSend = null;
    state.agents = [];
    state.currentAgentId = null;
    state.pendingAgentId = '';
    state.knowledgeBases = [];
    state.documents.clear();
    state.documentFrames.clear();
    state.documentLoads.clear();
    state.answers.clear();
    renderAgents();
    renderKnowledgeBases();
    els.chatView.hidden = true;
    els.authView.hidden = false;
    els.userLabel.hidden = true;
    els.logout.hidden = true;
    showAuthError(message || '');
  }

  function enterApp() {
    const user = state.session.user;
    els.userLabel.textContent = `${user.displayName || user.email}${user.role === 'admin' ? ' · admin' : ''}`;
    els.userLabel.hidden = false;
    els.logout.hidden = false;
    els.authView.hidden = true;
    els.chatView.hidden = false;
    openSocket();
    startNewConversation();
    loadConversations();
    loadAgents();
    loadKnowledgeBases();
    els.input.focus();
  }

  // ---------- conversations ----------
  async function loadConversations() {
    try {
      state.conversations = await request('GET', '/api/conversations?limit=200');
      renderConversationList();
    } catch (err) {
      showChatError(err.message);
    }
  }

  function renderConversationList() {
    els.conversationList.replaceChildren(...state.conversations.map((c) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'conversation-item';
      button.dataset.testid = 'conversation-item';
      button.dataset.conversationId = c.id;
      if (c.id === state.current) button.classList.add('active');
      const title = document.createElement('span');
      title.className = 'title';
      title.textContent = c.title || 'Untitled';
      const meta = document.createElement('span');
      meta.className = 'meta';
      meta.textContent = `${c.messageCount} message${c.messageCount === 1 ? '' : 's'} · ${formatTime(c.updatedAt)}`;
      button.append(title, meta);
      button.addEventListener('click', () => openConversation(c.id));
      li.append(button);
      return li;
    }));
    els.conversationEmpty.hidden = state.conversations.length > 0;
  }

  function startNewConversation() {
    if (state.current) sendFrame({ type: 'leave_conversation', conversationId: state.current });
    state.current = null;
    // The agent shown stays picked: the next conversation is created with it.
    state.pendingAgentId = els.agentSelect.value;
    state.currentAgentId = null;
    renderAgentBinding();
    els.title.textContent = 'New conversation';
    els.meta.textContent = 'Your first message creates it.';
    els.messages.replaceChildren();
    renderEvents(null);
    renderConversationList();
    updateCancel();
  }

  async function openConversation(id) {
    if (state.current && state.current !== id) {
      sendFrame({ type: 'leave_conversation', conversationId: state.current });
    }
    state.current = id;
    renderConversationList();
    showChatError('');
    try {
      const conv = await request('GET', `/api/conversations/${id}`);
      if (state.current !== id) return;
      renderConversation(conv);
      // Live frames for this conversation; a running stream arrives as a stream_snapshot.
      sendFrame({ type: 'join_conversation', conversationId: id });
      loadEvents();
    } catch (err) {
      showChatError(err.message);
    }
  }

  function renderConversation(conv) {
    els.title.textContent = conv.title || 'Untitled';
    els.meta.textContent = `${conv.messages.length} messages · seq ${conv.lastSeq}${conv.model ? ` · ${conv.model}` : ''}`;
    state.currentAgentId = conv.agentId || null;
    renderAgentBinding();
    els.messages.replaceChildren(...conv.messages.map((m) => {
      if (m.role === 'assistant') mergeAnswer(m, conv.lastSeq);
      const el = messageElement(m.role, m.content, m.status, m.id);
      const live = state.streams.get(m.id);
      if (live) {
        live.el = el;
        // Calls the stream has seen keep their place in the text; the rest come from REST.
        (m.toolCalls || []).forEach((c) => mergeCall(live, c));
        setBody(el, live.content, [...live.calls.values()]);
      } else {
        setBody(el, m.content, m.toolCalls);
        setCitations(el, m.citations);
      }
      return el;
    }));
    scrollToEnd();
    updateCancel();
  }

  // ---------- messages ----------
  function messageElement(role, content, status, id) {
    const li = els.messageTemplate.content.firstElementChild.cloneNode(true);
    li.dataset.role = role;
    if (id) li.dataset.messageId = id;
    li.querySelector('.role').textContent = role === 'assistant' ? 'Assistant' : role === 'user' ? 'You' : role;
    const footer = li.querySelector('.message-footer');
    if (role === 'assistant') {
      footer.querySelectorAll('.rate').forEach((button) => {
        button.addEventListener('click', () => rateAnswer(li, button.dataset.rating));
      });
    } else {
      footer.remove();
    }
    setContent(li, content);
    setStatus(li, status);
    renderAnswerMeta(li);
    return li;
  }
  function setContent(el, text) { el.querySelector('.content').textContent = text; }

  // An answer's body: its text, with a row for each tool call where it ran. A call carries
  // `offset`, the length of the text when it was called; calls read over REST or from a
  // snapshot have none (the server does not say where in the text they fell) and come first.
  function setBody(el, text, calls) {
    const all = calls || [];
    const ids = new Set(all.map((c) => c.callId));
    const top = all
      .map((call, i) => ({ call, i, at: Math.min(Math.max(call.offset || 0, 0), text.length) }))
      .filter(({ call }) => !call.parentCallId || !ids.has(call.parentCallId))
      .sort((a, b) => a.at - b.at || a.i - b.i);
    const nodes = [];
    let pos = 0;
    for (const { call, at } of top) {
      if (at > pos) { nodes.push(document.createTextNode(text.slice(pos, at))); pos = at; }
      nodes.push(toolRow(call, all));
    }
    if (pos < text.length || !nodes.length) nodes.push(document.createTextNode(text.slice(pos)));
    el.querySelector('.content').replaceChildren(...nodes);
  }

  /** Streamed text goes after whatever the body ends with (text or a tool call). */
  function appendText(el, delta) {
    const content = el.querySelector('.content');
    const last = content.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.appendData(delta);
    else content.append(document.createTextNode(delta));
  }

  function clip(text, max) {
    const flat = String(text).replace(/\s+/g, ' ').trim();
    return flat.length > max ? `${flat.slice(0, max)}…` : flat;
  }

  function toolRow(call, all) {
    const row = document.createElement('div');
    row.className = 'tool-call';
    row.dataset.testid = 'tool-call';
    row.dataset.callId = call.callId;
    const head = document.createElement('div');
    head.className = 'tool-head';
    const icon = document.createElement('span');
    icon.className = 'tool-icon';
    icon.setAttribute('aria-hidden', 'true');
    const name = document.createElement('span');
    name.className = 'tool-name';
    name.dataset.testid = 'tool-call-name';
    const args = document.createElement('code');
    args.className = 'tool-args';
    args.dataset.testid = 'tool-call-arguments';
    const badge = document.createElement('span');
    badge.className = 'tool-state';
    badge.dataset.testid = 'tool-call-state';
    head.append(icon, name, args, badge);
    const result = document.createElement('div');
    result.className = 'tool-result';
    result.dataset.testid = 'tool-call-result';
    const children = document.createElement('div');
    children.className = 'tool-children';
    row.append(head, result, children);
    updateToolRow(row, call);
    if (all) {
      all.filter((c) => c.parentCallId === call.callId).forEach((c) => children.append(toolRow(c, all)));
    }
    return row;
  }

  function updateToolRow(row, call) {
    const running = call.ok === null || call.ok === undefined;
    row.dataset.state = running ? 'running' : call.ok ? 'ok' : 'error';
    row.dataset.name = call.name;
    row.querySelector('.tool-name').textContent = call.name;
    if (call.arguments !== undefined) {
      let args = call.arguments || '';
      try { args = JSON.stringify(JSON.parse(args)); } catch { /* shown as the model wrote it */ }
      const argsEl = row.querySelector('.tool-args');
      argsEl.textContent = clip(args, 120);
      argsEl.title = args;
    }
    row.querySelector('.tool-state').textContent = running ? 'running…' : call.ok ? 'ok' : 'error';
    const result = row.querySelector('.tool-result');
    result.hidden = running || !call.content;
    result.textContent = running ? '' : clip(call.content || '', 200);
    result.title = running ? '' : String(call.content || '').slice(0, 2000);
  }

  function findToolRow(el, callId) {
    return Array.from(el.querySelectorAll('.tool-call')).find((r) => r.dataset.callId === callId) || null;
  }

  /** A call from a frame or REST into a stream's calls, keeping the place it was first seen at. */
  function mergeCall(stream, call, offset = 0) {
    const known = stream.calls.get(call.callId);
    const merged = { ...known, ...call, offset: known ? known.offset : offset };
    // A frame without the result must not turn a finished call back into a running one.
    if (known && (call.ok === null || call.ok === undefined)) {
      merged.ok = known.ok;
      merged.content = known.content;
    }
    stream.calls.set(call.callId, merged);
    return merged;
  }

  function setCitations(el, citations) {
    const list = el.querySelector('.citations');
    if (!list) return;
    const items = (citations || []).map((c) => {
      const li = document.createElement('li');
      li.className = 'citation';
      li.dataset.testid = 'citation';
      li.dataset.documentId = c.documentId;
      const doc = document.createElement('span');
      doc.className = 'citation-document';
      doc.dataset.testid = 'citation-document';
      doc.textContent = c.documentName;
      const snippet = document.createElement('span');
      snippet.className = 'citation-snippet';
      snippet.dataset.testid = 'citation-snippet';
      snippet.textContent = clip(c.snippet, 240);
      snippet.title = c.snippet;
      li.append(doc, snippet);
      return li;
    });
    list.replaceChildren(...items);
    list.hidden = items.length === 0;
  }
  function setStatus(el, status) {
    el.dataset.status = status;
    const badge = el.querySelector('.status');
    badge.textContent = status === 'complete' ? '' : status;
    badge.hidden = status === 'complete';
    // An answer is rated (and checked) once it has ended; the server refuses one still streaming.
    const footer = el.querySelector('.message-footer');
    if (footer) footer.hidden = status === 'streaming' || !el.dataset.messageId;
  }

  // ---------- ratings and checks of answers ----------
  function answerState(messageId) {
    let a = state.answers.get(messageId);
    if (!a) {
      a = { rating: null, ratingSeq: 0, validation: null, busy: false };
      state.answers.set(messageId, a);
    }
    return a;
  }

  /**
   * An answer read over REST (at the log's `lastSeq`) into state. A rating event seen on the
   * socket after that read wins; so do the judge's scores of a frame the read had not seen.
   */
  function mergeAnswer(m, lastSeq) {
    const a = answerState(m.id);
    if (a.ratingSeq <= lastSeq) {
      a.rating = m.rating || null;
      a.ratingSeq = lastSeq;
    }
    if (m.validation && !(a.validation && a.validation.judge && !m.validation.judge)) a.validation = m.validation;
  }

  function answerElement(messageId) {
    return els.messages.querySelector(`.message[data-role="assistant"][data-message-id="${messageId}"]`);
  }

  function renderAnswerMeta(el) {
    if (!el.querySelector('.message-footer') || !el.dataset.messageId) return;
    const a = state.answers.get(el.dataset.messageId);
    setRating(el, a ? a.rating : null, Boolean(a && a.busy));
    setValidation(el, a ? a.validation : null);
  }

  function setRating(el, rating, busy) {
    const value = rating ? rating.rating : null;
    el.querySelectorAll('.rate').forEach((button) => {
      button.setAttribute('aria-pressed', String(button.dataset.rating === value));
      button.disabled = busy;
    });
    const group = el.querySelector('.rating');
    if (busy) group.setAttribute('aria-busy', 'true');
    else group.removeAttribute('aria-busy');
  }

  /** "✓ checks passed" or "⚠ <failed checks>" (details in the tooltip), and the judge's scores. */
  function setValidation(el, validation) {
    const badge = el.querySelector('.validation-badge');
    if (!badge) return;
    if (!validation) {
      badge.hidden = true;
      badge.textContent = '';
      badge.removeAttribute('title');
      delete badge.dataset.state;
      return;
    }
    const checks = validation.checks || [];
    const failed = checks.filter((c) => !c.passed);
    const judge = validation.judge;
    const parts = [failed.length ? `⚠ ${failed.map((c) => c.name).join(', ')}` : '✓ checks passed'];
    if (judge) parts.push(`judge ${judge.relevance}/${judge.groundedness}`);
    const tips = failed.length
      ? failed.map((c) => `${c.name}: ${c.detail || 'failed'}`)
      : [`Passed: ${checks.map((c) => c.name).join(', ') || 'no checks ran'}`];
    if (judge) {
      tips.push(`Judge (${judge.model}): relevance ${judge.relevance}/5, groundedness ${judge.groundedness}/5. ${judge.reason}`);
    }
    badge.textContent = parts.join(' · ');
    badge.title = tips.join('\n');
    badge.dataset.state = failed.length ? 'failed' : 'passed';
    badge.hidden = false;
  }

  /** A click on a thumb: rate with it, or remove the rating when it is the one pressed. */
  async function rateAnswer(el, value) {
    const messageId = el.dataset.messageId;
    const conversationId = state.current;
    if (!messageId || !conversationId) return;
    const a = answerState(messageId);
    if (a.busy) return;
    const path = `/api/conversations/${conversationId}/messages/${messageId}/rating`;
    const remove = Boolean(a.rating && a.rating.rating === value);
    a.busy = true;
    renderAnswerMeta(el);
    showChatError('');
    try {
      if (remove) {
        await request('DELETE', path);
        a.rating = null;
      } else {
        const message = await request('PUT', path, { rating: value });
        a.rating = message.rating || null;
      }
      if (state.current === conversationId) loadEvents();
    } catch (err) {
      showChatError(`Could not rate the answer: ${err.message}`);
    } finally {
      a.busy = false;
      const shown = answerElement(messageId);
      if (shown) renderAnswerMeta(shown);
    }
  }

  /** A `message_rated` event (this tab's own change, or another tab's). */
  function onRatedEvent(event) {
    const d = event.data || {};
    if (!d.messageId) return;
    const a = answerState(d.messageId);
    if (event.seq <= a.ratingSeq) return; // older than what is shown
    a.ratingSeq = event.seq;
    a.rating = d.rating ? { rating: d.rating, comment: d.comment ?? null, ratedAt: event.createdAt } : null;
    const el = answerElement(d.messageId);
    if (el) {
      renderAnswerMeta(el);
      loadEvents(); // on screen: the open conversation's log has a new entry
    }
  }

  function onMessageValidated(f) {
    const a = answerState(f.messageId);
    a.validation = f.validation;
    const el = answerElement(f.messageId);
    if (el) renderAnswerMeta(el);
    if (f.conversationId === state.current) loadEvents(); // its answer_validated event
  }
  function appendMessage(el) {
    els.messages.append(el);
    scrollToEnd();
  }
  function scrollToEnd() { els.messages.scrollTop = els.messages.scrollHeight; }

  function showChatError(message) {
    els.chatError.textContent = message;
    els.chatError.hidden = !message;
  }

  function newClientMessageId() {
    if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
    return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  async function sendMessage() {
    const text = els.input.value.trim();
    if (!text) return;
    if (currentStream() || state.pendingSend) return; // one answer at a time in this conversation
    showChatError('');
    const clientMessageId = newClientMessageId();
    const el = messageElement('user', text, 'sending');
    appendMessage(el);
    const pending = { clientMessageId, conversationId: state.current, el };
    state.pendingSend = pending;
    els.input.value = '';
    updateCancel();
    if (!state.current && state.pendingAgentId) {
      // A new conversation with an agent: create it bound, then send into it.
      try {
        const conv = await request('POST', '/api/conversations', { agentId: state.pendingAgentId });
        if (state.pendingSend !== pending) return; // signed out or started over meanwhile
        pending.conversationId = conv.id;
        state.current = conv.id;
        state.currentAgentId = conv.agentId || null;
        els.title.textContent = conv.title || 'Untitled';
        els.meta.textContent = '';
        renderAgentBinding();
        sendFrame({ type: 'join_conversation', conversationId: conv.id });
        loadConversations();
      } catch (err) {
        if (state.pendingSend === pending) state.pendingSend = null;
        setStatus(el, 'failed');
        showChatError(err.message);
        updateCancel();
        return;
      }
    }
    const frame = { type: 'stream_chat', message: text, clientMessageId };
    if (pending.conversationId) frame.conversationId = pending.conversationId;
    sendFrame(frame);
  }

  function currentStream() {
    for (const [id, s] of state.streams) {
      if (s.conversationId === state.current) return { id, ...s };
    }
    return null;
  }

  function updateCancel() {
    const running = currentStream();
    els.cancel.hidden = !running;
    els.send.disabled = Boolean(running) || Boolean(state.pendingSend);
  }

  // ---------- WebSocket ----------
  function setWsStatus(text, kind) {
    els.wsStatus.textContent = text;
    els.wsStatus.dataset.state = kind;
  }

  function openSocket() {
    if (!state.session) return;
    clearTimeout(state.reconnectTimer);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/ws?token=${encodeURIComponent(state.session.accessToken)}`;
    const socket = new WebSocket(url);
    state.socket = socket;
    state.socketReady = false;
    setWsStatus('connecting…', 'connecting');
    socket.addEventListener('message', (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      handleFrame(frame);
    });
    socket.addEventListener('close', () => {
      if (state.socket !== socket) return;
      state.socket = null;
      state.socketReady = false;
      setWsStatus('offline', 'offline');
      if (!state.session) return;
      // Reconnect with a fresh token if needed; joining again yields a snapshot of any running stream.
      state.reconnectTimer = setTimeout(async () => {
        try { await request('GET', '/api/auth/me'); } catch { /* refresh or sign-out handled there */ }
        if (state.session) openSocket();
      }, state.reconnectDelay);
      state.reconnectDelay = Math.min(state.reconnectDelay * 2, 10_000);
    });
  }

  function closeSocket() {
    clearTimeout(state.reconnectTimer);
    const socket = state.socket;
    state.socket = null;
    state.socketReady = false;
    state.outbox = [];
    if (socket) socket.close();
    setWsStatus('offline', 'offline');
  }

  function sendFrame(frame) {
    if (state.socket && state.socketReady) state.socket.send(JSON.stringify(frame));
    else if (frame.type !== 'leave_conversation') state.outbox.push(frame);
  }

  function handleFrame(frame) {
    switch (frame.type) {
      case 'ready': {
        state.socketReady = true;
        state.reconnectDelay = 500;
        setWsStatus('live', 'live');
        if (state.current) {
          // After a reconnect: reload what was committed meanwhile, then live frames.
          openConversation(state.current);
        }
        // Documents still being ingested may have moved on while the socket was down.
        reloadUnfinishedDocuments();
        const queued = state.outbox;
        state.outbox = [];
        queued.forEach((f) => state.socket.send(JSON.stringify(f)));
        break;
      }
      case 'stream_start': onStreamStart(frame); break;
      case 'stream_chunk': onStreamChunk(frame); break;
      case 'stream_snapshot': onStreamSnapshot(frame); break;
      case 'stream_complete': onStreamComplete(frame); break;
      case 'tool_call': onToolCall(frame); break;
      case 'tool_result': onToolResult(frame); break;
      case 'document_status': onDocumentStatus(frame); break;
      case 'message_validated': onMessageValidated(frame); break;
      case 'event':
        if (frame.event && frame.event.type === 'message_rated') onRatedEvent(frame.event);
        break;
      case 'error': onError(frame); break;
      default: break; // joined, left, pong
    }
  }

  function onStreamStart(f) {
    const pending = state.pendingSend;
    const mine = pending && (pending.conversationId === f.conversationId || !pending.conversationId);
    if (mine) {
      state.pendingSend = null;
      pending.el.dataset.messageId = f.userMessageId;
      setStatus(pending.el, 'complete');
      if (!pending.conversationId) {
        // The server created the conversation: it is the open one now.
        state.current = f.conversationId;
        sendFrame({ type: 'join_conversation', conversationId: f.conversationId });
        loadConversations().then(() => {
          const c = state.conversations.find((x) => x.id === f.conversationId);
          if (c && state.current === c.id) els.title.textContent = c.title || 'Untitled';
        });
      }
    }
    if (state.streams.has(f.messageId)) return; // a replay of a turn we already show
    const stream = newStream(f.conversationId);
    state.streams.set(f.messageId, stream);
    if (f.conversationId === state.current) {
      if (!mine && !els.messages.querySelector(`[data-message-id="${f.userMessageId}"]`)) {
        // Another tab or device sent this turn: reload to show its user message.
        openConversation(f.conversationId);
        return;
      }
      stream.el = messageElement('assistant', '', 'streaming', f.messageId);
      stream.el.classList.add('streaming');
      appendMessage(stream.el);
    }
    updateCancel();
  }

  function onStreamChunk(f) {
    const s = state.streams.get(f.messageId);
    if (!s) return;
    if (f.index < s.nextIndex) return; // already shown (snapshot overlap)
    if (f.index > s.nextIndex) {
      // A gap: ask for a snapshot by joining again.
      sendFrame({ type: 'join_conversation', conversationId: f.conversationId });
      return;
    }
    s.nextIndex += 1;
    s.content += f.delta;
    if (s.el) { appendText(s.el, f.delta); scrollToEnd(); }
  }

  function newStream(conversationId) {
    // calls: callId -> the call with its `offset` in the text; toolSeq: tool frames up to this
    // seq are in the last snapshot already.
    return { conversationId, nextIndex: 0, content: '', el: null, calls: new Map(), toolSeq: 0 };
  }

  function onToolCall(f) {
    const s = state.streams.get(f.messageId);
    if (!s || f.seq <= s.toolSeq) return; // the snapshot that follows a join has it
    const call = mergeCall(s, {
      callId: f.callId, name: f.name, arguments: f.arguments, ok: null, content: null,
      agentId: f.agentId, parentCallId: f.parentCallId,
    }, s.content.length);
    if (!s.el) return;
    const existing = findToolRow(s.el, f.callId);
    if (existing) { updateToolRow(existing, call); return; }
    const parent = call.parentCallId && findToolRow(s.el, call.parentCallId);
    if (parent) parent.querySelector('.tool-children').append(toolRow(call));
    else s.el.querySelector('.content').append(toolRow(call));
    scrollToEnd();
  }

  function onToolResult(f) {
    const s = state.streams.get(f.messageId);
    if (s && f.seq <= s.toolSeq) return;
    const result = { callId: f.callId, name: f.name, ok: f.ok, content: f.content };
    let call = result;
    if (s) {
      if (!s.calls.has(f.callId)) {
        // Its tool_call was missed: show the call where the text is now.
        call = mergeCall(s, { arguments: '', ...result }, s.content.length);
        if (s.el) s.el.querySelector('.content').append(toolRow(call));
        return;
      }
      call = mergeCall(s, result);
    }
    const el = (s && s.el) || els.messages.querySelector(`[data-message-id="${f.messageId}"]`);
    const row = el && findToolRow(el, f.callId);
    if (row) updateToolRow(row, call);
  }

  function onStreamSnapshot(f) {
    let s = state.streams.get(f.messageId);
    if (!s) {
      s = newStream(f.conversationId);
      state.streams.set(f.messageId, s);
    }
    if (f.nextIndex < s.nextIndex) return;
    s.nextIndex = f.nextIndex;
    s.content = f.content;
    s.toolSeq = Math.max(s.toolSeq, f.toolSeq || 0);
    (f.toolCalls || []).forEach((c) => mergeCall(s, c));
    if (f.conversationId === state.current) {
      if (!s.el) {
        s.el = els.messages.querySelector(`[data-message-id="${f.messageId}"]`)
          || messageElement('assistant', '', 'streaming', f.messageId);
        if (!s.el.isConnected) appendMessage(s.el);
      }
      s.el.classList.add('streaming');
      setStatus(s.el, 'streaming');
      setBody(s.el, s.content, [...s.calls.values()]);
      scrollToEnd();
    }
    updateCancel();
  }

  function onStreamComplete(f) {
    const s = state.streams.get(f.messageId);
    state.streams.delete(f.messageId);
    if (f.conversationId === state.current) {
      const el = (s && s.el) || els.messages.querySelector(`[data-message-id="${f.messageId}"]`);
      if (el) {
        el.classList.remove('streaming');
        // The committed text and calls are authoritative; calls seen live keep their place.
        if (s) (f.toolCalls || []).forEach((c) => mergeCall(s, c));
        setBody(el, f.content, s ? [...s.calls.values()] : f.toolCalls);
        setCitations(el, f.citations);
        setStatus(el, f.status);
      }
      if (f.status === 'failed' && f.error) showChatError(`The model failed: ${f.error.message}`);
      loadEvents();
      els.meta.textContent = `seq ${f.seq}`;
    }
    loadConversations();
    updateCancel();
  }

  function onError(f) {
    if (f.code === 'UNAUTHORIZED') {
      // The socket closes; the reconnect refreshes the token first.
      return;
    }
    if (state.pendingSend) {
      setStatus(state.pendingSend.el, 'failed');
      state.pendingSend = null;
    }
    showChatError(`${f.code}: ${f.message}`);
    updateCancel();
  }

  // ---------- events ----------
  async function loadEvents() {
    const id = state.current;
    const load = ++state.eventsLoad;
    if (!id) { renderEvents(null); return; }
    try {
      const events = await request('GET', `/api/conversations/${id}/events?limit=1000`);
      // Several loads may overlap (a rating, then its event frame): the last one asked wins.
      if (state.current === id && state.eventsLoad === load) renderEvents(events);
    } catch (err) {
      showChatError(err.message);
    }
  }

  function summarize(event) {
    const d = event.data || {};
    const text = d.content ?? d.title ?? d.comment ?? '';
    const parts = [];
    if (event.type === 'message_rated') parts.push(d.rating ? `rated ${d.rating}` : 'rating removed');
    if (event.type === 'answer_validated' && Array.isArray(d.checks)) {
      const failed = d.checks.filter((c) => !c.passed).map((c) => c.name);
      parts.push(failed.length ? `failed: ${failed.join(', ')}` : `${d.checks.length} checks passed`);
      if (d.judge) parts.push(`judge ${d.judge.relevance}/${d.judge.groundedness}`);
    }
    if (d.name) parts.push(d.name);
    if (typeof d.ok === 'boolean') parts.push(d.ok ? 'ok' : 'error');
    if (d.role) parts.push(d.role);
    if (d.status) parts.push(d.status);
    if (typeof text === 'string' && text) parts.push(`“${text.length > 60 ? `${text.slice(0, 60)}…` : text}”`);
    return parts.join(' · ');
  }

  function renderEvents(events) {
    if (!events) {
      els.eventList.replaceChildren();
      els.eventsEmpty.hidden = false;
      els.eventsEmpty.textContent = 'Open a conversation to see its events.';
      return;
    }
    els.eventsEmpty.hidden = events.length > 0;
    els.eventsEmpty.textContent = 'No events.';
    els.eventList.replaceChildren(...events.map((e) => {
      const li = document.createElement('li');
      li.className = 'event-item';
      li.dataset.testid = 'event-item';
      li.dataset.type = e.type;
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      const seq = document.createElement('span');
      seq.className = 'seq';
      seq.textContent = `#${e.seq}`;
      const type = document.createElement('span');
      type.className = `type type-${e.type}`;
      type.textContent = e.type;
      const time = document.createElement('span');
      time.className = 'time';
      time.textContent = formatTime(e.createdAt);
      const line = document.createElement('span');
      line.className = 'summary-text';
      line.textContent = summarize(e);
      summary.append(seq, type, time, line);
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify(e.data, null, 2);
      details.append(summary, pre);
      li.append(details);
      return li;
    }));
    els.eventList.scrollTop = els.eventList.scrollHeight;
  }

  function formatTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
      : d.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
  }

  // ---------- agents ----------
  async function loadAgents() {
    try {
      state.agents = await request('GET', '/api/agents');
      renderAgents();
    } catch (err) {
      showChatError(err.message);
    }
  }

  function agentName(id) {
    const agent = state.agents.find((a) => a.id === id);
    return agent ? agent.name : `agent ${id.slice(0, 8)}…`;
  }

  function renderAgents() {
    // The picker: "No agent" and every agent you may use (renderAgentBinding picks one).
    els.agentSelect.replaceChildren(new Option('No agent', ''), ...state.agents.map((a) => new Option(a.name, a.id)));

    els.agentList.replaceChildren(...state.agents.map((a) => {
      const li = document.createElement('li');
      li.className = 'agent-item';
      li.dataset.testid = 'agent-item';
      li.dataset.agentId = a.id;
      const name = document.createElement('span');
      name.className = 'agent-name';
      name.textContent = a.name;
      const meta = document.createElement('span');
      meta.className = 'meta';
      const kbs = a.knowledgeBaseIds.length;
      meta.textContent = [
        a.tools.length ? a.tools.join(', ') : 'no tools',
        kbs ? `${kbs} knowledge base${kbs === 1 ? '' : 's'}` : '',
        `v${a.version}`,
        a.visibility === 'public' ? 'public' : '',
      ].filter(Boolean).join(' · ');
      const instructions = document.createElement('span');
      instructions.className = 'agent-instructions';
      instructions.textContent = clip(a.instructions || '', 140);
      li.append(name, meta, instructions);
      return li;
    }));
    els.agentsEmpty.hidden = state.agents.length > 0;
    renderAgentBinding();
  }

  /** The header's agent badge and the picker, for the open (or the next new) conversation. */
  function renderAgentBinding() {
    const id = (state.current ? state.currentAgentId : state.pendingAgentId) || '';
    els.agentBadge.hidden = !id;
    els.agentBadge.textContent = id ? `Agent: ${agentName(id)}` : '';
    if (id) els.agentBadge.dataset.agentId = id;
    else delete els.agentBadge.dataset.agentId;
    // A bound agent not listed (yet, or no longer) still shows as picked.
    if (!Array.from(els.agentSelect.options).some((o) => o.value === id)) {
      els.agentSelect.append(new Option(agentName(id), id));
    }
    els.agentSelect.value = id;
  }

  async function pickAgent() {
    const agentId = els.agentSelect.value;
    showChatError('');
    if (!state.current) {
      // Nothing to bind yet: the first message creates the conversation with it.
      state.pendingAgentId = agentId;
      renderAgentBinding();
      return;
    }
    const id = state.current;
    els.agentSelect.disabled = true;
    try {
      const conv = await request('PATCH', `/api/conversations/${id}`, { agentId });
      if (state.current === id) {
        state.currentAgentId = conv.agentId || null;
        loadEvents();
      }
    } catch (err) {
      showChatError(err.message);
    } finally {
      els.agentSelect.disabled = false;
      renderAgentBinding();
    }
  }

  function showAgentError(message) {
    els.agentError.textContent = message;
    els.agentError.hidden = !message;
  }

  async function createAgent() {
    showAgentError('');
    const name = els.agentName.value.trim();
    if (!name) { showAgentError('Give the agent a name.'); return; }
    const body = {
      name,
      instructions: els.agentInstructions.value,
      tools: Array.from(els.agentForm.querySelectorAll('input[name="agent-tool"]:checked')).map((i) => i.value),
      knowledgeBaseIds: Array.from(els.agentKnowledgeBases.selectedOptions).map((o) => o.value),
    };
    els.agentCreate.disabled = true;
    try {
      const agent = await request('POST', '/api/agents', body);
      state.agents = [...state.agents.filter((a) => a.id !== agent.id), agent];
      renderAgents();
      els.agentForm.reset();
      loadAgents();
    } catch (err) {
      showAgentError(err.message);
    } finally {
      els.agentCreate.disabled = false;
    }
  }

  // ---------- knowledge bases ----------
  const DOCUMENT_STAGE = { pending: 0, processing: 1, ready: 2, failed: 2 };

  async function loadKnowledgeBases() {
    try {
      state.knowledgeBases = await request('GET', '/api/knowledge-bases');
      renderKnowledgeBases();
      await Promise.all(state.knowledgeBases.map((kb) => loadDocuments(kb.id)));
    } catch (err) {
      showChatError(err.message);
    }
  }

  /** One GET at a time per knowledge base; asked again meanwhile, it runs once more after. */
  function loadDocuments(kbId) {
    const inFlight = state.documentLoads.get(kbId);
    if (inFlight) { inFlight.again = true; return inFlight.done; }
    const load = { again: false, done: null };
    load.done = (async () => {
      try {
        do {
          load.again = false;
          const docs = await request('GET', `/api/knowledge-bases/${kbId}/documents`);
          if (state.documentLoads.get(kbId) !== load) return; // signed out meanwhile
          docs.forEach((d) => mergeDocument(d, false));
          renderDocuments(kbId);
        } while (load.again);
      } catch (err) {
        if (err.status !== 404) showChatError(err.message);
      } finally {
        if (state.documentLoads.get(kbId) === load) state.documentLoads.delete(kbId);
      }
    })();
    state.documentLoads.set(kbId, load);
    return load.done;
  }

  function reloadUnfinishedDocuments() {
    const kbs = new Set();
    state.documents.forEach((d) => { if (DOCUMENT_STAGE[d.status] < 2) kbs.add(d.knowledgeBaseId); });
    kbs.forEach((id) => loadDocuments(id));
  }

  /**
   * A document from REST (whole) or a document_status frame (`live`: status, progress, error)
   * into state. Ingestion only moves forward, so an update older than what is shown (a GET
   * answered after a later frame) changes nothing. Returns the document, or null for a frame
   * about a document not listed yet (kept until it is).
   */
  function mergeDocument(update, live) {
    const known = state.documents.get(update.id);
    if (!known) {
      if (live) { state.documentFrames.set(update.id, update); return null; }
      const doc = { ...update, live: false };
      state.documents.set(doc.id, doc);
      const early = state.documentFrames.get(doc.id);
      if (early) { state.documentFrames.delete(doc.id); mergeDocument(early, true); }
      return doc;
    }
    const stage = DOCUMENT_STAGE[update.status] ?? 0;
    const knownStage = DOCUMENT_STAGE[known.status] ?? 0;
    const newer = stage > knownStage || (stage === knownStage && (update.progress ?? 0) >= (known.progress ?? 0));
    if (newer) {
      if (live) {
        Object.assign(known, { status: update.status, progress: update.progress, error: update.error ?? known.error });
      } else {
        Object.assign(known, update);
      }
    }
    if (live) known.live = true;
    return known;
  }

  function onDocumentStatus(f) {
    const update = {
      id: f.documentId, knowledgeBaseId: f.knowledgeBaseId, status: f.status, progress: f.progress,
      error: f.error ?? null,
    };
    const doc = mergeDocument(update, true);
    if (doc) renderDocument(doc);
    // A document not listed yet (uploaded elsewhere), or one that is done: its chunk count
    // and the base's document count come from a GET.
    if (!doc || DOCUMENT_STAGE[f.status] === 2) {
      if (state.knowledgeBases.some((kb) => kb.id === f.knowledgeBaseId)) loadDocuments(f.knowledgeBaseId);
      else loadKnowledgeBases();
    }
  }

  function showKbError(message) {
    els.kbError.textContent = message;
    els.kbError.hidden = !message;
  }

  async function createKnowledgeBase() {
    showKbError('');
    const name = els.kbName.value.trim();
    if (!name) { showKbError('Give the knowledge base a name.'); return; }
    const description = els.kbDescription.value.trim();
    els.kbCreate.disabled = true;
    try {
      const kb = await request('POST', '/api/knowledge-bases', description ? { name, description } : { name });
      state.knowledgeBases = [...state.knowledgeBases.filter((k) => k.id !== kb.id), kb];
      renderKnowledgeBases();
      els.kbForm.reset();
    } catch (err) {
      showKbError(err.message);
    } finally {
      els.kbCreate.disabled = false;
    }
  }

  async function uploadDocument(kbId, file, errorEl) {
    errorEl.hidden = true;
    const form = new FormData();
    form.append('file', file, file.name);
    try {
      const doc = await request('POST', `/api/knowledge-bases/${kbId}/documents`, form);
      mergeDocument(doc, false);
      renderDocuments(kbId);
    } catch (err) {
      errorEl.textContent = `${file.name}: ${err.message}`;
      errorEl.hidden = false;
      return;
    }
    // Where it stands now; document_status frames bring the rest.
    loadDocuments(kbId);
  }

  function renderKnowledgeBases() {
    const selected = new Set(Array.from(els.agentKnowledgeBases.selectedOptions).map((o) => o.value));
    els.agentKnowledgeBases.replaceChildren(...state.knowledgeBases.map((kb) => {
      const option = new Option(kb.name, kb.id);
      option.selected = selected.has(kb.id);
      return option;
    }));

    els.kbList.replaceChildren(...state.knowledgeBases.map((kb) => {
      const li = document.createElement('li');
      li.className = 'kb-item';
      li.dataset.testid = 'knowledge-base';
      li.dataset.knowledgeBaseId = kb.id;
      const head = document.createElement('div');
      head.className = 'kb-head';
      const name = document.createElement('span');
      name.className = 'kb-name';
      name.dataset.testid = 'knowledge-base-name';
      name.textContent = kb.name;
      const count = document.createElement('span');
      count.className = 'meta kb-count';
      head.append(name, count);
      li.append(head);
      if (kb.description) {
        const description = document.createElement('p');
        description.className = 'kb-description muted';
        description.textContent = kb.description;
        li.append(description);
      }
      const upload = document.createElement('label');
      upload.className = 'upload';
      const caption = document.createElement('span');
      caption.textContent = 'Upload a document (text, Markdown, HTML or PDF)';
      const input = document.createElement('input');
      input.type = 'file';
      input.dataset.testid = 'kb-upload';
      input.accept = '.txt,.md,.markdown,.html,.htm,.pdf,text/plain,text/markdown,text/html,application/pdf';
      const error = document.createElement('p');
      error.className = 'error';
      error.dataset.testid = 'kb-upload-error';
      error.setAttribute('role', 'alert');
      error.hidden = true;
      input.addEventListener('change', () => {
        const files = Array.from(input.files || []);
        input.value = '';
        files.forEach((file) => uploadDocument(kb.id, file, error));
      });
      upload.append(caption, input);
      const docs = document.createElement('ul');
      docs.className = 'documents';
      docs.dataset.testid = 'document-list';
      li.append(upload, error, docs);
      return li;
    }));
    els.kbEmpty.hidden = state.knowledgeBases.length > 0;
    state.knowledgeBases.forEach((kb) => renderDocuments(kb.id));
  }

  function kbElement(kbId) {
    return Array.from(els.kbList.children).find((li) => li.dataset.knowledgeBaseId === kbId) || null;
  }

  function renderDocuments(kbId) {
    const li = kbElement(kbId);
    if (!li) return;
    const docs = [...state.documents.values()].filter((d) => d.knowledgeBaseId === kbId);
    li.querySelector('.documents').replaceChildren(...docs.map((d) => {
      const row = document.createElement('li');
      row.className = 'document';
      row.dataset.testid = 'document';
      row.dataset.documentId = d.id;
      const head = document.createElement('div');
      head.className = 'doc-head';
      const name = document.createElement('span');
      name.className = 'doc-name';
      name.dataset.testid = 'document-name';
      const status = document.createElement('span');
      status.className = 'doc-status';
      status.dataset.testid = 'document-status';
      head.append(name, status);
      const progress = document.createElement('progress');
      progress.className = 'doc-progress';
      progress.dataset.testid = 'document-progress';
      progress.max = 1;
      const error = document.createElement('p');
      error.className = 'doc-error';
      error.dataset.testid = 'document-error';
      row.append(head, progress, error);
      updateDocumentRow(row, d);
      return row;
    }));
    const count = li.querySelector('.kb-count');
    count.textContent = `${docs.length} document${docs.length === 1 ? '' : 's'}`;
  }

  function renderDocument(doc) {
    const li = kbElement(doc.knowledgeBaseId);
    const row = li && Array.from(li.querySelectorAll('.document')).find((r) => r.dataset.documentId === doc.id);
    if (row) updateDocumentRow(row, doc);
    else renderDocuments(doc.knowledgeBaseId);
  }

  function updateDocumentRow(row, d) {
    row.dataset.status = d.status;
    row.dataset.live = String(Boolean(d.live));
    row.querySelector('.doc-name').textContent = d.name;
    row.querySelector('.doc-name').title = `${d.mimeType || ''} · ${d.size ?? '?'} bytes`;
    const pct = Math.round((d.progress || 0) * 100);
    row.querySelector('.doc-status').textContent = d.status === 'processing' ? `processing ${pct}%`
      : d.status === 'ready' ? `ready · ${d.chunkCount} chunk${d.chunkCount === 1 ? '' : 's'}`
      : d.status;
    const progress = row.querySelector('.doc-progress');
    progress.value = d.status === 'ready' ? 1 : d.progress || 0;
    progress.hidden = d.status === 'failed';
    const error = row.querySelector('.doc-error');
    error.textContent = d.status === 'failed' ? d.error || 'Ingestion failed.' : '';
    error.hidden = d.status !== 'failed';
  }

  // ---------- side panel ----------
  function showTab(name) {
    els.tabs.forEach((tab) => {
      const active = tab.dataset.tab === name;
      tab.setAttribute('aria-selected', String(active));
      tab.classList.toggle('active', active);
      $(tab.getAttribute('aria-controls')).hidden = !active;
    });
  }

  // ---------- wiring ----------
  els.authForm.addEventListener('submit', (ev) => { ev.preventDefault(); authenticate('login'); });
  els.signup.addEventListener('click', () => authenticate('register'));
  els.logout.addEventListener('click', () => signOut());
  els.newConversation.addEventListener('click', () => { startNewConversation(); els.input.focus(); });
  els.composer.addEventListener('submit', (ev) => { ev.preventDefault(); sendMessage(); });
  els.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendMessage(); }
  });
  els.cancel.addEventListener('click', () => {
    const running = currentStream();
    if (running) sendFrame({ type: 'cancel_stream', messageId: running.id });
  });
  els.eventsRefresh.addEventListener('click', () => loadEvents());
  els.tabs.forEach((tab) => tab.addEventListener('click', () => showTab(tab.dataset.tab)));
  els.agentSelect.addEventListener('change', () => pickAgent());
  els.agentForm.addEventListener('submit', (ev) => { ev.preventDefault(); createAgent(); });
  els.kbForm.addEventListener('submit', (ev) => { ev.preventDefault(); createKnowledgeBase(); });

  const saved = loadSession();
  if (saved && saved.accessToken) {
    state.session = saved;
    request('GET', '/api/auth/me')
      .then((user) => { saveSession({ ...state.session, user }); enterApp(); })
      .catch(() => signOut());
  }
})();
