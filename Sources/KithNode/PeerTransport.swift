import Foundation
import KithAPI
import KithCRDT
import KithCrypto
import KithJSON
import KithNet
import KithReplication
import Synchronization

/// The cluster keys: HMAC-SHA256 keys by id, and the one new frames are tagged with. Read from
/// a key file (`id hex` per line, the first line sends) or `KITH_CLUSTER_KEY` (one key, id 1),
/// and re-read while running, so keys rotate without a restart: install the new key on every
/// node (second line), make it first everywhere, then remove the old one.
public final class ClusterKeys: FrameAuthenticator, @unchecked Sendable {
    private let state: Mutex<(keys: [UInt8: [UInt8]], sending: UInt8)>

    public init(keys: [UInt8: [UInt8]], sending: UInt8) {
        precondition(keys[sending] != nil, "the sending key must be installed")
        state = Mutex((keys, sending))
    }

    /// Parses a key file's text: `id hex` per line (blank lines and `#` comments skipped).
    public static func parse(_ text: String) throws -> (keys: [UInt8: [UInt8]], sending: UInt8) {
        var keys: [UInt8: [UInt8]] = [:]
        var sending: UInt8?
        for line in text.split(separator: "\n") where !line.trimmingCharacters(in: .whitespaces).isEmpty && !line.hasPrefix("#") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2, let id = UInt8(parts[0]), let key = Crypto.bytes(hex: parts[1]), key.count >= 32 else {
                throw ConfigurationError("a cluster key line must be '<id 0-255> <at least 64 hex digits>'")
            }
            guard keys[id] == nil else { throw ConfigurationError("cluster key id \(id) appears twice") }
            keys[id] = key
            sending = sending ?? id
        }
        guard let sending else { throw ConfigurationError("the cluster key file holds no key") }
        return (keys, sending)
    }

    public func replace(keys: [UInt8: [UInt8]], sending: UInt8) {
        state.withLock { $0 = (keys, sending) }
    }

    public var sendingKeyId: UInt8 { state.withLock { $0.sending } }
    public func knows(keyId: UInt8) -> Bool { state.withLock { $0.keys[keyId] != nil } }

    public func tag(keyId: UInt8, _ message: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: state.withLock { $0.keys[keyId]! }, message: message)
    }

    public func verify(keyId: UInt8, _ message: [UInt8], tag: ArraySlice<UInt8>) -> Bool {
        guard let key = state.withLock({ $0.keys[keyId] }) else { return false }
        return Crypto.constantTimeEquals(Crypto.hmacSHA256(key: key, message: message), Array(tag))
    }
}

/// Counters of the peer links, for metrics and `kith sync status`.
final class TransportMetrics: Sendable {
    let framesSent = Atomic<Int>(0)
    let framesReceived = Atomic<Int>(0)
    let bytesSent = Atomic<Int>(0)
    let bytesReceived = Atomic<Int>(0)
    let framesDropped = Atomic<Int>(0)
    let connectionsRefused = Atomic<Int>(0)
    /// Inbound connections closed for bad input, by reason, and which of them reach the log.
    let closedConnections = Mutex(WarningLimiter())
}

/// Kith's peer links over TCP: a listener whose connections each get a reader thread, and one
/// outbound link (with a writer thread and a bounded queue) per peer address. Each direction of
/// a connection opens with a hello; every frame is authenticated (see docs/wire-format.md).
/// A frame that fails any check closes its connection and is never delivered.
final class PeerTransport: @unchecked Sendable {
    typealias Deliver = @Sendable (_ message: PeerMessage, _ sender: UInt64, _ address: String) -> Void

    let me: UInt64
    let address: String
    let keys: ClusterKeys
    let fingerprint: [UInt8]
    let metrics = TransportMetrics()
    private let deliver: Deliver
    private let log: Log
    /// Whether refused socket options were logged (once per process).
    private let socketOptionsWarning = Once()
    private let listener: TCPListener
    private let links = Mutex<[String: OutboundLink]>([:])
    private let running = Atomic<Bool>(true)
    private let inbound = Mutex<[TCPStream]>([])

    init(me: UInt64, address: String, keys: ClusterKeys, fingerprint: [UInt8], log: Log, deliver: @escaping Deliver) throws {
        self.me = me
        self.keys = keys
        self.fingerprint = fingerprint
        self.log = log
        self.deliver = deliver
        listener = try TCPListener(address: address)
        // Port 0 asks for any free port: advertise the one bound.
        let host = address[..<address.lastIndex(of: ":")!]
        self.address = "\(host):\(listener.port)"
    }

    func start() {
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "kith-peer-accept"
        thread.start()
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        for link in links.withLock({ Array($0.values) }) { link.stop() }
        for stream in inbound.withLock({ $0 }) { stream.close() }
    }

    /// Queues `message` for the peer at `address` (dropped if its queue is full or it is unreachable:
    /// replication repairs whatever is lost).
    func send(_ message: PeerMessage, to address: String) {
        guard running.load(ordering: .relaxed), address != self.address else { return }
        let link = links.withLock { links in
            if let link = links[address] { return link }
            let link = OutboundLink(transport: self, address: address)
            links[address] = link
            return link
        }
        link.enqueue(message)
    }

    fileprivate func hello(nonce: [UInt8]) -> Hello { Hello(nonce: nonce, forgetKeyFingerprint: fingerprint, address: address) }

    /// Checks a peer's hello: same forget-key secret, or the link is refused.
    fileprivate func accept(_ frame: Frame) throws -> Hello {
        let hello = try Hello(payload: frame.payload)
        guard Crypto.constantTimeEquals(hello.forgetKeyFingerprint, fingerprint) else {
            metrics.connectionsRefused.wrappingAdd(1, ordering: .relaxed)
            throw ConfigurationError("peer \(hello.address) uses a different forget-key secret; refusing it")
        }
        return hello
    }

    private func acceptLoop() {
        while running.load(ordering: .relaxed) {
            // Nothing within 200 ms (or a connection that failed at once): look at `running` again.
            guard let stream = try? listener.accept(timeoutMilliseconds: 200, connectionTimeoutMilliseconds: 30_000) else { continue }
            warnIfDegraded(stream)
            inbound.withLock { $0.append(stream) }
            let thread = Thread { [self] in
                serve(stream)
                inbound.withLock { streams in streams.removeAll { $0 === stream } }
            }
            thread.name = "kith-peer-in"
            thread.start()
        }
    }

    /// Says once per process that peer sockets lack options (the kernel refused them): the links
    /// work, but without their timeouts or with slower notice of a cut.
    func warnIfDegraded(_ stream: TCPStream) {
        guard !stream.optionsNotSet.isEmpty, socketOptionsWarning.claim() else { return }
        log(.error, "peer sockets work without some options the kernel refused", [("options", .string(stream.optionsNotSet.joined(separator: ",")))])
    }

    /// Reads one inbound connection: the peer's hello, ours back, then its frames until it ends.
    private func serve(_ stream: TCPStream) {
        defer { stream.close() }
        let nonce: [UInt8]
        do {
            nonce = try Crypto.randomBytes(Frame.nonceSize)
        } catch {
            // Without a fresh nonce the peer's frames cannot be told from replays: refuse it.
            return log(.error, "peer connection refused: no random bytes for its nonce", [("error", .string("\(error)"))])
        }
        var decoder = FrameDecoder(authenticator: keys, nonce: nonce)
        var encoder = FrameEncoder(authenticator: keys, sender: me)
        var peer: (id: UInt64, hello: Hello)?
        do {
            while running.load(ordering: .relaxed) {
                let bytes = try stream.read()
                if bytes.isEmpty { return }
                metrics.bytesReceived.wrappingAdd(bytes.count, ordering: .relaxed)
                decoder.append(bytes)
                while let frame = try decoder.next() {
                    metrics.framesReceived.wrappingAdd(1, ordering: .relaxed)
                    if let peer {
                        guard frame.sender == peer.id else { throw FrameError.authenticationFailed }
                        deliver(try PeerMessage(tag: frame.type, payload: frame.payload), peer.id, peer.hello.address)
                    } else {
                        let hello = try accept(frame)
                        peer = (frame.sender, hello)
                        try stream.write(encoder.encode(type: Frame.helloType, payload: self.hello(nonce: nonce).payload))
                    }
                }
            }
        } catch {
            guard running.load(ordering: .relaxed) else { return }
            metrics.framesDropped.wrappingAdd(1, ordering: .relaxed)
            let reason = Self.reason(error)
            // Anyone who can reach the gossip port can cause these: counted always, logged at a bounded rate.
            let decision = metrics.closedConnections.withLock { $0.admit(reason, now: monotonicMillis()) }
            guard case .log(let suppressed) = decision else { return }
            var fields: [(String, JSONValue)] = [
                ("peer.address", .string(peer?.hello.address ?? "unknown")), ("reason", .string(reason)), ("error", .string("\(error)")),
            ]
            if suppressed > 0 { fields.append(("suppressed", .number(JSONNumber(Int64(suppressed))))) }
            log(.warning, "peer connection closed", fields)
        }
    }

    /// Why a connection was closed, as a metric label.
    static func reason(_ error: any Error) -> String {
        switch error {
        case let frame as FrameError:
            switch frame {
            case .badMagic: return "bad_magic"
            case .unsupportedVersion: return "unsupported_version"
            case .unknownType: return "unknown_type"
            case .unknownKey: return "unknown_key"
            case .reservedBitsSet: return "reserved_bits"
            case .tooLarge: return "too_large"
            case .badSequence: return "bad_sequence"
            case .authenticationFailed: return "authentication_failed"
            case .expectedHello: return "expected_hello"
            case .malformedHello: return "malformed_hello"
            }
        case is BinaryDecodingError: return "malformed_message"
        case is ConfigurationError: return "secret_mismatch"
        default: return "connection_error"
        }
    }
}

/// One peer address's outbound connection: a writer thread, a bounded queue, reconnection.
private final class OutboundLink: @unchecked Sendable {
    static let queueLimit = 4_096
    unowned let transport: PeerTransport
    let address: String
    private let queue = Mutex<(messages: [PeerMessage], stopped: Bool)>(([], false))
    private let wakeup = DispatchSemaphore(value: 0)
    private var stream: TCPStream?
    private var encoder: FrameEncoder?

    init(transport: PeerTransport, address: String) {
        self.transport = transport
        self.address = address
        let thread = Thread { [self] in run() }
        thread.name = "kith-peer-out"
        thread.start()
    }

    func enqueue(_ message: PeerMessage) {
        let accepted = queue.withLock { state in
            guard state.messages.count < Self.queueLimit else { return false }
            state.messages.append(message)
            return true
        }
        if accepted { wakeup.signal() } else { transport.metrics.framesDropped.wrappingAdd(1, ordering: .relaxed) }
    }

    /// The writer thread sees this at its next wake-up (a write in progress ends within its
    /// 1 s timeout) and closes the connection itself: only that thread touches `stream`.
    func stop() {
        queue.withLock { $0.stopped = true }
        wakeup.signal()
    }

    private func run() {
        while true {
            wakeup.wait()
            let (messages, stopped) = queue.withLock { state in
                defer { state.messages.removeAll() }
                return (state.messages, state.stopped)
            }
            if stopped {
                stream?.close()
                return
            }
            do {
                if stream == nil { try connect() }
                for message in messages {
                    let frame = encoder!.encode(type: message.tag, payload: message.encodePayload())
                    try stream!.write(frame)
                    transport.metrics.framesSent.wrappingAdd(1, ordering: .relaxed)
                    transport.metrics.bytesSent.wrappingAdd(frame.count, ordering: .relaxed)
                }
            } catch {
                // Unreachable or broken: drop this batch (pulls repair it) and reconnect next time.
                transport.metrics.framesDropped.wrappingAdd(messages.count, ordering: .relaxed)
                stream?.close()
                stream = nil
            }
        }
    }

    /// Opens the connection: our hello, then the peer's, whose nonce tags everything we send after.
    private func connect() throws {
        let stream = try TCPStream.connect(to: address, timeoutMilliseconds: 1_000)
        transport.warnIfDegraded(stream)
        let nonce = try Crypto.randomBytes(Frame.nonceSize)
        var encoder = FrameEncoder(authenticator: transport.keys, sender: transport.me)
        try stream.write(encoder.encode(type: Frame.helloType, payload: transport.hello(nonce: nonce).payload))
        var decoder = FrameDecoder(authenticator: transport.keys, nonce: nonce)
        while true {
            let bytes = try stream.read()
            guard !bytes.isEmpty else { throw SystemError(call: "read peer hello (connection closed)", errno: ECONNRESET) }
            decoder.append(bytes)
            if let frame = try decoder.next() {
                encoder.receiverNonce = try transport.accept(frame).nonce
                break
            }
        }
        self.stream = stream
        self.encoder = encoder
    }
}
