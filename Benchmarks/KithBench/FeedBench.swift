import Foundation
import KithHTTP
import KithNet

#if canImport(Glibc)
    import Glibc
#endif

/// The change feed against real processes, one consumer on an event stream
/// (`Accept: text/event-stream`), run by `kith-bench --cluster` (and so by `make bench`):
/// - `feed.one_node.records_per_s` beside `feed.one_node.ingest_per_s`: records delivered while
///   one writer sends batches of 100 identify calls as fast as the node takes them, for 5 s;
/// - `feed.one_node.delivery_ms_p50`/`_p99`: 100 single writes a second for 5 s, from each
///   request's sending to the consumer's receipt of its record (the durable write included);
/// - the same two latencies with the writes at one node of three and the consumer at another
///   (`feed.cluster.…`: replication included);
/// - `visibility.one_node.ms_p50`/`_p99` and `visibility.cluster.…`: from a write's
///   acknowledgement until a read without a token shows it, at full ingest (`visibility`).
extension ClusterBenchmark {
    func feedDelivery() throws {
        let fresh = directory + "/feed-one"
        let (process, port) = try startFreshNode(kithBinary, fresh)
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let single = "127.0.0.1:\(port)"
        try feedThroughput(writer: single, consumer: single, prefix: "feed.one_node")
        try feedLatency(writer: single, consumer: single, prefix: "feed.one_node")
        try visibility(writer: single, reader: single, prefix: "visibility.one_node")

        var nodes: [BenchNode] = []
        defer { for node in nodes { node.stop() } }
        nodes.append(try BenchNode(self, name: "f1", seeds: []))
        for index in 2...3 { nodes.append(try BenchNode(self, name: "f\(index)", seeds: [nodes[0].gossip])) }
        try waitForMembers(nodes, count: 3)
        try feedThroughput(writer: nodes[0].address, consumer: nodes[1].address, prefix: "feed.cluster")
        try feedLatency(writer: nodes[0].address, consumer: nodes[1].address, prefix: "feed.cluster")
        try visibility(writer: nodes[0].address, reader: nodes[1].address, prefix: "visibility.cluster")
    }

    /// How long after its acknowledgement a write is seen by a read without a session token,
    /// at full ingest (docs/consistency.md): a loader sends batches of 100 to `writer` as fast
    /// as they are taken while 200 single writes, one every 20 ms, are each read at `reader`
    /// every millisecond until the read shows them. On the node that took the write the first
    /// read shows it (it waits for the commit); elsewhere replication decides.
    private func visibility(writer: String, reader: String, prefix: String) throws {
        let run = UUID().uuidString.prefix(8)
        let loading = ManagedFlag()
        let loader = Thread {
            guard let client = try? HTTPClient(address: writer) else { return }
            var sent = 0
            while !loading.isSet {
                let batch = (0..<100).map { index in
                    #"{"type":"identify","userId":"load-\#((sent + index) % 5_000)","traits":{"n":\#(sent + index)},"messageId":"v\#(run)-\#(sent + index)"}"#
                }
                let body = #"{"batch":["# + batch.joined(separator: ",") + "]}"
                guard (try? client.request("POST", "/v1/batch", headers: [BenchNode.writeKey], body: Array(body.utf8)))?.status == 200 else { return }
                sent += 100
            }
        }
        loader.start()
        defer { loading.set() }
        Thread.sleep(forTimeInterval: 0.5)
        let writes = try HTTPClient(address: writer)
        let reads = try HTTPClient(address: reader)
        var delays: [Double] = []
        for index in 0..<200 {
            let user = "vis-\(run)-\(index)"
            let body = #"{"userId":"\#(user)","traits":{"probe":\#(index)},"messageId":"p\#(run)-\#(index)"}"#
            guard try writes.request("POST", "/v1/identify", headers: [BenchNode.writeKey], body: Array(body.utf8)).status == 200 else {
                throw BenchmarkFailed("a write was refused")
            }
            let acknowledged = DispatchTime.now().uptimeNanoseconds
            let deadline = acknowledged + 10_000_000_000
            while true {
                let read = try reads.request("GET", "/v1/profiles/user_id:\(user)/traits?purpose=support", headers: [BenchNode.token])
                if read.status == 200 { break }
                guard DispatchTime.now().uptimeNanoseconds < deadline else { throw BenchmarkFailed("write \(index) not visible after 10 s") }
                Thread.sleep(forTimeInterval: 0.001)
            }
            delays.append(Double(DispatchTime.now().uptimeNanoseconds - acknowledged) / 1e6)
            Thread.sleep(forTimeInterval: 0.02)
        }
        delays.sort()
        report("\(prefix).ms_p50", delays[delays.count / 2], decimals: 2)
        report("\(prefix).ms_p99", delays[delays.count * 99 / 100], decimals: 2)
    }

    private func feedThroughput(writer: String, consumer: String, prefix: String) throws {
        let stream = try EventStreamReader(address: consumer)
        defer { stream.close() }
        let client = try HTTPClient(address: writer)
        let run = UUID().uuidString.prefix(8)
        var sent = 0
        let elapsed = try seconds {
            let end = Date().addingTimeInterval(5)
            while Date() < end {
                let batch = (0..<100).map { index in
                    #"{"type":"identify","userId":"feed-\#((sent + index) % 5_000)","traits":{"n":\#(sent + index)},"messageId":"t\#(run)-\#(sent + index)"}"#
                }
                let body = #"{"batch":["# + batch.joined(separator: ",") + "]}"
                guard try client.request("POST", "/v1/batch", headers: [BenchNode.writeKey], body: Array(body.utf8)).status == 200 else {
                    throw BenchmarkFailed("a batch was refused")
                }
                sent += 100
            }
        }
        // Records of this run received by the time the last one arrives, over the time from the
        // first write to then.
        let last = "t\(run)-\(sent - 1)"
        let delivered = try stream.waitFor(last, seconds: 60)
        let total = Double(DispatchTime.now().uptimeNanoseconds - stream.openedAt) / 1e9
        report("\(prefix).ingest_per_s", Double(sent) / elapsed)
        report("\(prefix).records_per_s", Double(delivered.filter { $0.hasPrefix("t\(run)-") }.count) / total)
    }

    private func feedLatency(writer: String, consumer: String, prefix: String) throws {
        let stream = try EventStreamReader(address: consumer)
        defer { stream.close() }
        let client = try HTTPClient(address: writer)
        let run = UUID().uuidString.prefix(8)
        var sentAt: [String: UInt64] = [:]
        for index in 0..<500 {
            let id = "l\(run)-\(index)"
            let body = #"{"userId":"feed-lat-\#(index % 50)","traits":{"n":\#(index)},"messageId":"\#(id)"}"#
            sentAt[id] = DispatchTime.now().uptimeNanoseconds
            guard try client.request("POST", "/v1/identify", headers: [BenchNode.writeKey], body: Array(body.utf8)).status == 200 else {
                throw BenchmarkFailed("a write was refused")
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
        _ = try stream.waitFor("l\(run)-499", seconds: 30)
        let latencies = stream.arrivals.compactMap { id, at in sentAt[id].map { Double(at - $0) / 1e6 } }.sorted()
        guard latencies.count == 500 else { throw BenchmarkFailed("\(latencies.count) of 500 writes reached the feed") }
        report("\(prefix).delivery_ms_p50", latencies[latencies.count / 2], decimals: 2)
        report("\(prefix).delivery_ms_p99", latencies[latencies.count * 99 / 100], decimals: 2)
    }
}

/// A flag one thread sets and another reads.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// One consumer of `GET /v1/changes` as an event stream, reading on a thread of its own and
/// noting when each record's `messageId` arrived.
final class EventStreamReader: @unchecked Sendable {
    private let descriptor: Int32
    private let lock = NSLock()
    private var received: [(id: String, at: UInt64)] = []
    private var thread: Thread?
    let openedAt = DispatchTime.now().uptimeNanoseconds

    init(address: String) throws {
        let parts = address.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else { throw BenchmarkFailed("an address \(address)") }
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = port.bigEndian
        inet_pton(AF_INET, String(parts[0]), &socketAddress.sin_addr)
        let connected = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw BenchmarkFailed("cannot connect to \(address)") }
        let request =
            "GET /v1/changes?purpose=support&since=now&limit=1000 HTTP/1.1\r\nHost: kith\r\nAuthorization: Bearer bench-token\r\n"
            + "Accept: text/event-stream\r\n\r\n"
        _ = Array(request.utf8).withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        let thread = Thread { [self] in readLoop() }
        self.thread = thread
        thread.start()
        // The stream is open once its head arrived; writes after that are the run's.
        try waitUntil(10, "the event stream to open") { lock.withLock { opened } }
    }

    private var opened = false

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var pending: [UInt8] = []
        let marker = Array(#""messageId":""#.utf8)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { return }
            let now = DispatchTime.now().uptimeNanoseconds
            pending += buffer[0..<count]
            var ids: [String] = []
            // Whole lines only; a record's messageId is the first one on its data line.
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeFirst(newline + 1)
                guard let start = line.firstRange(of: marker)?.upperBound, let end = line[start...].firstIndex(of: UInt8(ascii: "\"")) else {
                    continue
                }
                ids.append(String(decoding: line[start..<end], as: UTF8.self))
            }
            lock.withLock {
                opened = true
                for id in ids { received.append((id, now)) }
            }
        }
    }

    var arrivals: [(id: String, at: UInt64)] { lock.withLock { received } }

    /// Waits until `id` has arrived; returns every id received so far.
    func waitFor(_ id: String, seconds: Double) throws -> [String] {
        try waitUntil(seconds, "\(id) to reach the feed") { lock.withLock { received.contains { $0.id == id } } }
        return lock.withLock { received.map(\.id) }
    }

    func close() {
        shutdown(descriptor, Int32(SHUT_RDWR))
        Glibc.close(descriptor)
    }
}
