// chat-server playground: plain JavaScript, no build step, no external resources.
// REST for accounts, conversations and the event log; the WebSocket (/api/ws) for streaming.
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
    title: $('conversation-title'), meta: $('conversation-meta'),
    messages: $('messages'), chatError: $('chat-error'),
    composer: $('composer'), input: $('composer-input'), send: $('send-button'), cancel: $('cancel-button'),
    eventList: $('event-list'), eventsEmpty: $('events-empty'), eventsRefresh: $('events-refresh'),
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
    streams: new Map(),       // messageId -> {conversationId, nextIndex, content, el}
    pendingSend: null,        // {clientMessageId, conversationId, el} until its stream_start
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
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (auth && state.session) headers.authorization = `Bearer ${state.session.accessToken}`;
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
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
    els.messages.replaceChildren(...conv.messages.map((m) => {
      const el = messageElement(m.role, m.content, m.status, m.id);
      const live = state.streams.get(m.id);
      if (live) { live.el = el; setContent(el, live.content); }
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
    setContent(li, content);
    setStatus(li, status);
    return li;
  }
  function setContent(el, text) { el.querySelector('.content').textContent = text; }
  function setStatus(el, status) {
    el.dataset.status = status;
    const badge = el.querySelector('.status');
    badge.textContent = status === 'complete' ? '' : status;
    badge.hidden = status === 'complete';
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

  function sendMessage() {
    const text = els.input.value.trim();
    if (!text) return;
    if (currentStream()) return; // one answer at a time in this conversation
    showChatError('');
    const clientMessageId = newClientMessageId();
    const el = messageElement('user', text, 'sending');
    appendMessage(el);
    state.pendingSend = { clientMessageId, conversationId: state.current, el };
    const frame = { type: 'stream_chat', message: text, clientMessageId };
    if (state.current) frame.conversationId = state.current;
    sendFrame(frame);
    els.input.value = '';
    updateCancel();
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
        const queued = state.outbox;
        state.outbox = [];
        queued.forEach((f) => state.socket.send(JSON.stringify(f)));
        break;
      }
      case 'stream_start': onStreamStart(frame); break;
      case 'stream_chunk': onStreamChunk(frame); break;
      case 'stream_snapshot': onStreamSnapshot(frame); break;
      case 'stream_complete': onStreamComplete(frame); break;
      case 'error': onError(frame); break;
      default: break; // joined, left, pong, event
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
    const stream = { conversationId: f.conversationId, nextIndex: 0, content: '', el: null };
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
    if (s.el) { setContent(s.el, s.content); scrollToEnd(); }
  }

  function onStreamSnapshot(f) {
    let s = state.streams.get(f.messageId);
    if (!s) {
      s = { conversationId: f.conversationId, nextIndex: 0, content: '', el: null };
      state.streams.set(f.messageId, s);
    }
    if (f.nextIndex < s.nextIndex) return;
    s.nextIndex = f.nextIndex;
    s.content = f.content;
    if (f.conversationId === state.current) {
      if (!s.el) {
        s.el = els.messages.querySelector(`[data-message-id="${f.messageId}"]`)
          || messageElement('assistant', '', 'streaming', f.messageId);
        if (!s.el.isConnected) appendMessage(s.el);
      }
      s.el.classList.add('streaming');
      setStatus(s.el, 'streaming');
      setContent(s.el, s.content);
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
        setContent(el, f.content); // the committed text is authoritative
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
    if (!id) { renderEvents(null); return; }
    try {
      const events = await request('GET', `/api/conversations/${id}/events?limit=1000`);
      if (state.current === id) renderEvents(events);
    } catch (err) {
      showChatError(err.message);
    }
  }

  function summarize(event) {
    const d = event.data || {};
    const text = d.content ?? d.title ?? '';
    const parts = [];
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

  const saved = loadSession();
  if (saved && saved.accessToken) {
    state.session = saved;
    request('GET', '/api/auth/me')
      .then((user) => { saveSession({ ...state.session, user }); enterApp(); })
      .catch(() => signOut());
  }
})();
