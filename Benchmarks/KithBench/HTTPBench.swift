import Foundation
import KithHTTP
import KithNet

/// HTTP benchmarks against a real `kith serve` process on loopback: keep-alive client threads,
/// each bounded in time; both sides share this machine's cores.
struct HTTPBenchmark {
    let kithBinary: String
    let seconds: Double
    let lines: [[UInt8]]
    let customers: Int

    func run() throws {
        let dataDirectory = "Benchmarks/.work/http-node"
        try? FileManager.default.removeItem(atPath: dataDirectory)
        try? FileManager.default.removeItem(atPath: dataDirectory + ".secret")
        let (process, port) = try startNode(dataDirectory)
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let address = "127.0.0.1:\(port)"
        let authorization = HTTPHeader("Authorization", "Basic " + Data("bench:".utf8).base64EncodedString())

        // Batch ingest: 100 workload messages a request, 4 connections.
        let batches = stride(from: 0, to: lines.count, by: 100).map { start in
            Array(#"{"batch":["#.utf8) + Array(lines[start..<min(start + 100, lines.count)].joined(separator: [UInt8(ascii: ",")])) + Array("]}".utf8)
        }
        let ingest = load(address, connections: 4) { client, index in
            let body = batches[index % batches.count]
            let response = try client.request("POST", "/v1/batch", headers: [authorization], body: body)
            return response.status == 200 ? 100 : 0
        }
        report("http.ingest_events_per_s", ingest.units / ingest.seconds)
        report("http.ingest_p99_ms", ingest.p99 * 1_000, decimals: 2)

        // Single identify calls, 16 connections, each answered only once durable.
        let identifies = lines.filter { $0.starts(with: Array(#"{"context""#.utf8)) && String(decoding: $0, as: UTF8.self).contains(#""type":"identify""#) }
        let identify = load(address, connections: 16) { client, index in
            let response = try client.request("POST", "/v1/identify", headers: [authorization], body: identifies[index % identifies.count])
            return response.status == 200 ? 1 : 0
        }
        report("http.identify_per_s", identify.units / identify.seconds)
        report("http.identify_p99_ms", identify.p99 * 1_000, decimals: 2)

        // Random profile reads by user id, 4 connections.
        let bearer = HTTPHeader("Authorization", "Bearer bench-token")
        let reads = load(address, connections: 4) { client, index in
            let user = String(format: "u-%07d", (index &* 2_654_435_761) % customers)
            let response = try client.request("GET", "/v1/profiles/user_id:\(user)", headers: [bearer])
            return response.status == 200 || response.status == 404 ? 1 : 0
        }
        report("http.read_rps", reads.units / reads.seconds)
        report("http.read_p99_ms", reads.p99 * 1_000, decimals: 2)
    }

    private func startNode(_ dataDirectory: String) throws -> (Process, UInt16) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: kithBinary)
        process.arguments = [
            "serve", "--data-dir", dataDirectory, "--http", "127.0.0.1:0", "--write-key", "bench", "--token", "bench-token",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = ""
        while !line.hasSuffix("\n") {
            let byte = output.fileHandleForReading.readData(ofLength: 1)
            guard !byte.isEmpty else { throw BenchmarkFailed("kith serve did not start") }
            line += String(decoding: byte, as: UTF8.self)
        }
        guard let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
            let port = UInt16(line[range].split(separator: ":")[1])
        else { throw BenchmarkFailed("cannot read the port from: \(line)") }
        return (process, port)
    }

    struct Result {
        var units: Double
        var seconds: Double
        var p99: Double
    }

    /// Runs `connections` threads for `seconds`, each calling `body` (which returns units done).
    private func load(_ address: String, connections: Int, _ body: @escaping @Sendable (HTTPClient, Int) throws -> Int) -> Result {
        let results = Tally()
        let deadline = Date().addingTimeInterval(seconds)
        let group = DispatchGroup()
        let started = Date()
        for connection in 0..<connections {
            group.enter()
            Thread {
                defer { group.leave() }
                guard let client = try? HTTPClient(address: address) else { return }
                var units = 0
                var latencies: [Double] = []
                var index = connection * 1_000_003
                while Date() < deadline {
                    let start = DispatchTime.now().uptimeNanoseconds
                    guard let done = try? body(client, index) else { break }
                    latencies.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                    units += done
                    index += 1
                }
                results.add(units, latencies)
            }.start()
        }
        group.wait()
        let elapsed = Date().timeIntervalSince(started)
        let (units, latencies) = results.totals()
        let p99 = latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * 0.99))]
        return Result(units: Double(units), seconds: elapsed, p99: p99)
    }
}

/// Units and latencies gathered from the client threads.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var units = 0
    private var latencies: [Double] = []

    func add(_ more: Int, _ times: [Double]) {
        lock.withLock {
            units += more
            latencies += times
        }
    }

    func totals() -> (Int, [Double]) { lock.withLock { (units, latencies.sorted()) } }
}

struct BenchmarkFailed: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
