import CLinux
import KithHTTP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// An HTTP/1.1 server on non-blocking sockets: one epoll loop per thread, each with its own
/// listening socket on the same port (SO_REUSEPORT), so the kernel spreads connections.
public final class HTTPServer: Sendable {
    public struct Configuration: Sendable {
        public var host = "127.0.0.1"
        public var port: UInt16 = 0
        public var loops = 2
        public var limits = HTTPRequestParser.Limits()
        /// A request must arrive whole within this time once its first byte has (slow clients,
        /// slowloris); otherwise 408 and close.
        public var requestTimeoutNanoseconds: UInt64 = 30_000_000_000
        /// An idle keep-alive connection is closed after this.
        public var idleTimeoutNanoseconds: UInt64 = 60_000_000_000
        public var maximumConnections = 10_000
        /// How often timeouts are checked.
        public var tickNanoseconds: UInt64 = 250_000_000

        public init() {}
    }

    public typealias Handler = @Sendable (HTTPRequest, HTTPResponder) -> Void

    public let configuration: Configuration
    let handler: Handler
    let connectionCount = Atomic<Int>(0)
    /// Requests handed to the handler whose responses have not been written yet.
    let unansweredRequests = Atomic<Int>(0)
    private let state = Mutex<(loops: [EventLoop], threads: [pthread_t], port: UInt16)>(([], [], 0))

    public init(configuration: Configuration, handler: @escaping Handler) {
        self.configuration = configuration
        self.handler = handler
    }

    /// The number of open connections.
    public var openConnections: Int { connectionCount.load(ordering: .relaxed) }

    /// Binds and starts the loops; returns the port (useful with port 0).
    public func start() throws(SystemError) -> UInt16 {
        var port = configuration.port
        var workers: [LoopWorker] = []
        for _ in 0..<max(1, configuration.loops) {
            let listener = try Listener.bind(host: configuration.host, port: port, reusePort: true)
            port = listener.port
            workers.append(try LoopWorker(server: self, listener: listener))
        }
        var threads: [pthread_t] = []
        for worker in workers {
            let box = Unmanaged.passRetained(worker).toOpaque()
            var thread = pthread_t()
            let created = pthread_create(
                &thread, nil,
                { raw in
                    let worker = Unmanaged<LoopWorker>.fromOpaque(raw!).takeRetainedValue()
                    worker.run()
                    return nil
                }, box)
            precondition(created == 0, "pthread_create failed: \(created)")
            threads.append(thread)
        }
        let loops = workers.map(\.loop)
        state.withLock { $0 = (loops, threads, port) }
        return port
    }

    /// Graceful stop: no new connections; requests already received are answered (waiting at most
    /// `drainNanoseconds`); then every loop ends and every connection is closed.
    public func stop(drainNanoseconds: UInt64 = 10_000_000_000) {
        let (loops, threads, _) = state.withLock { current in
            let taken = current
            current = ([], [], current.port)
            return taken
        }
        for loop in loops { loop.execute { loop.stopAccepting?() } }
        let deadline = EventLoop.now() + drainNanoseconds
        while unansweredRequests.load(ordering: .relaxed) > 0 && EventLoop.now() < deadline { usleep(2_000) }
        for loop in loops { loop.stop() }
        for thread in threads { pthread_join(thread, nil) }
    }
}

/// One loop thread: its listener and its connections.
final class LoopWorker: @unchecked Sendable {
    let loop: EventLoop
    unowned let server: HTTPServer
    let listener: Listener
    /// Loop thread only.
    var connections: [Int32: Connection] = [:]
    /// Loop thread only: every connection of this loop reads into it (they never read at once).
    var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)

    init(server: HTTPServer, listener: Listener) throws(SystemError) {
        self.server = server
        self.listener = listener
        loop = try EventLoop()
    }

    private var listening = true

    func run() {
        do {
            try loop.register(listener.descriptor, events: UInt32(EPOLLIN.rawValue)) { [unowned self] _ in self.acceptAll() }
        } catch {
            preconditionFailure("cannot watch the listener: \(error)")
        }
        loop.stopAccepting = { [unowned self] in self.closeListener() }
        loop.run(tickInterval: server.configuration.tickNanoseconds) { self.expireSlowAndIdle() }
        closeListener()
        loop.stopAccepting = nil
        for connection in connections.values { connection.close() }
    }

    private func closeListener() {
        guard listening else { return }
        listening = false
        loop.deregister(listener.descriptor)
        close(listener.descriptor)
    }

    private func acceptAll() {
        while let descriptor = try? listener.accept() {  // until EAGAIN: nothing more to accept now
            if server.connectionCount.wrappingAdd(1, ordering: .relaxed).newValue > server.configuration.maximumConnections {
                // Over the limit: say so and close, rather than leave the client hanging. (Counted
                // out first, so that whoever reads the 503 sees the count it implies.)
                server.connectionCount.wrappingSubtract(1, ordering: .relaxed)
                let busy = HTTPResponse.error(503, code: "too_many_connections", message: "the server is at its connection limit")
                _ = busy.serialized(closing: true).withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
                Glibc.close(descriptor)
                continue
            }
            let connection = Connection(descriptor: descriptor, worker: self)
            connections[descriptor] = connection
            do {
                try loop.register(descriptor, events: UInt32(EPOLLIN.rawValue)) { [unowned connection] events in
                    connection.handle(events: events)
                }
            } catch {
                connection.close()
            }
        }
    }

    private func expireSlowAndIdle() {
        let now = EventLoop.now()
        for connection in Array(connections.values) { connection.expire(now: now) }
    }

    func closed(_ connection: Connection) {
        connections[connection.descriptor] = nil
        server.connectionCount.wrappingSubtract(1, ordering: .relaxed)
    }
}
