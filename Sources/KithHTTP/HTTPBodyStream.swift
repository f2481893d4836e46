import Synchronization

/// A response body sent a piece at a time, for as long as the client stays (Server-Sent Events).
/// The handler sends pieces from any thread; the server writes them in order once the response's
/// head is out, and tells the stream when the connection ends. The response then has no
/// `Content-Length`, and the connection closes when the stream finishes.
public final class HTTPBodyStream: Sendable, Equatable {
    private struct State {
        /// Where pieces go once the server has written the head (nil piece: finished).
        var sink: (@Sendable ([UInt8]?) -> Void)?
        /// Pieces sent before the head was out.
        var waiting: [[UInt8]] = []
        var finished = false
        var closed = false
        /// Bytes handed to the connection and not yet written to the socket.
        var unwritten = 0
        var onClose: [@Sendable () -> Void] = []
    }

    private let state = Mutex(State())

    public init() {}

    public static func == (a: HTTPBodyStream, b: HTTPBodyStream) -> Bool { a === b }

    /// Whether the connection has ended (the client left, or the server closed it).
    public var isClosed: Bool { state.withLock { $0.closed } }

    /// Bytes sent and not yet taken by the socket: a producer waits while this is large.
    public var unwrittenBytes: Int { state.withLock { $0.unwritten } }

    /// Sends `bytes` after what was sent before; nothing once the connection has ended.
    public func send(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let sink = state.withLock { state -> (@Sendable ([UInt8]?) -> Void)? in
            guard !state.closed, !state.finished else { return nil }
            state.unwritten += bytes.count
            guard let sink = state.sink else {
                state.waiting.append(bytes)
                return nil
            }
            return sink
        }
        sink?(bytes)
    }

    /// Ends the body: the connection closes once everything sent is written.
    public func finish() {
        let sink = state.withLock { state -> (@Sendable ([UInt8]?) -> Void)? in
            guard !state.closed, !state.finished else { return nil }
            state.finished = true
            return state.sink
        }
        sink?(nil)
    }

    /// Runs `body` once, when the connection ends (at once if it has).
    public func onClose(_ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            if state.closed { return true }
            state.onClose.append(body)
            return false
        }
        if now { body() }
    }

    // MARK: - The server's side

    /// The head is written: pieces go to `sink` from now on (those sent before first, then the
    /// end if the handler finished already).
    package func attach(_ sink: @escaping @Sendable ([UInt8]?) -> Void) {
        let (waiting, finished) = state.withLock { state in
            state.sink = sink
            defer { state.waiting = [] }
            return (state.waiting, state.finished)
        }
        for piece in waiting { sink(piece) }
        if finished { sink(nil) }
    }

    /// The connection wrote `count` bytes of what was sent.
    package func written(_ count: Int) {
        state.withLock { $0.unwritten = max(0, $0.unwritten - count) }
    }

    /// The connection ended.
    package func closed() {
        let callbacks = state.withLock { state -> [@Sendable () -> Void] in
            guard !state.closed else { return [] }
            state.closed = true
            state.sink = nil
            defer { state.onClose = [] }
            return state.onClose
        }
        for callback in callbacks { callback() }
    }
}
