import Foundation
import KithHTTP
import KithJSON
import KithNet

/// HTTP benchmarks against a real `kith serve` process on loopback: keep-alive client threads,
/// each bounded in time; both sides share this machine's cores.
struct HTTPBenchmark {
    let kithBinary: String
    let baselineBinary: String?
    let seconds: Double
    let lines: [[UInt8]]
    let customers: Int

    func run() throws {
        let dataDirectory = "Benchmarks/.work/http-node"
        var (process, port) = try startFreshNode(kithBinary, dataDirectory)
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let address = "127.0.0.1:\(port)"
        let authorization = HTTPHeader("Authorization", "Basic " + Data("bench:".utf8).base64EncodedString())

        // Batch ingest: 100 workload messages a request, 4 connections. Connection c sends
        // batches c, c + 4, c + 8, ...: no batch is sent twice (a redelivery costs far less than
        // a new message, and would flatter the figure), and a connection stops when its share
        // runs out before the time does.
        let batches = stride(from: 0, to: lines.count, by: 100).map { start in
            Array(#"{"batch":["#.utf8) + Array(lines[start..<min(start + 100, lines.count)].joined(separator: [UInt8(ascii: ",")])) + Array("]}".utf8)
        }
        let ingestConnections = 4
        let ingest = load(address, connections: ingestConnections) { client, connection, request in
            let number = connection + request * ingestConnections
            guard number < batches.count else { throw BenchmarkFailed("out of batches") }
            let response = try client.request("POST", "/v1/batch", headers: [authorization], body: batches[number])
            return response.status == 200 ? 100 : 0
        }
        report("http.ingest_events_per_s", ingest.units / ingest.seconds)
        report("http.ingest_p99_ms", ingest.p99 * 1_000, decimals: 2)
        print("http.ingest_messages: \(Int(ingest.units)) (each sent once; \(lines.count) in the workload)")

        // Single identify calls, 16 connections, each answered only once durable. Each call is a
        // new message (the workload's identifies with fresh messageIds): the ingest phase already
        // stored the workload's own, and redeliveries would measure duplicate handling instead.
        let identifies = lines.compactMap { line -> (before: [UInt8], after: [UInt8])? in
            guard String(decoding: line, as: UTF8.self).contains(#""type":"identify""#) else { return nil }
            return splitAtMessageId(line)
        }
        // wrk drives them when installed (as the reads below): on these two shared cores our own
        // blocking client threads take more CPU than the node.
        if Wrk.isInstalled {
            let result = try Wrk(seconds: seconds).run(url: "http://\(address)", script: try identifyScript(identifies))
            report("http.identify_per_s", result.rps)
            report("http.identify_p99_ms", result.p99Milliseconds, decimals: 2)
            print("http.identify_non_2xx: \(result.non2xx)")
        } else {
            let identify = load(address, connections: 16) { client, connection, request in
                let template = identifies[(connection * 7_919 + request) % identifies.count]
                let body = template.before + Array("bench-\(connection)-\(request)".utf8) + template.after
                let response = try client.request("POST", "/v1/identify", headers: [authorization], body: body)
                return response.status == 200 ? 1 : 0
            }
            report("http.identify_per_s", identify.units / identify.seconds)
            report("http.identify_p99_ms", identify.p99 * 1_000, decimals: 2)
            print("http.identify_driver: kith-bench client (install wrk for the wrk figure)")
        }

        // Random reads of profiles that exist. wrk (Debian's) drives them when installed: our own
        // blocking client costs more CPU than the server on these two shared cores.
        let bearer = HTTPHeader("Authorization", "Bearer bench-token")
        let identifiers = try existingProfiles(address)
        if Wrk.isInstalled {
            let script = try readScript(paths: identifiers.map { "/v1/profiles/\($0)?purpose=support" }, token: "bench-token")
            let ours = try Wrk(seconds: seconds).run(url: "http://\(address)", script: script)
            report("http.read_rps", ours.rps)
            report("http.read_p99_ms", ours.p99Milliseconds, decimals: 2)
            print("http.read_non_2xx: \(ours.non2xx)")
            // The same reads for a purpose whose policy masks contact data (support shows all).
            let policyScript = try readScript(paths: identifiers.map { "/v1/profiles/\($0)?purpose=analytics" }, token: "bench-token")
            let policy = try Wrk(seconds: seconds).run(url: "http://\(address)", script: policyScript)
            report("read.policy_rps", policy.rps)
            report("read.policy_p99_ms", policy.p99Milliseconds, decimals: 2)
            print("read.policy_non_2xx: \(policy.non2xx)")
            if let (nginx, _) = try nginxBaseline(Wrk(seconds: seconds)) {
                report("http.nginx_rps", nginx.rps)
                report("http.read_vs_nginx", ours.rps / nginx.rps, decimals: 2)
            } else {
                print("http.nginx_rps: nginx not installed")
            }
            if let baselineBinary {
                process.terminate()
                process.waitUntilExit()
                process = try policyCost(baselineBinary, dataDirectory, script: policyScript, batches: batches, authorization: authorization)
            }
        } else {
            let reads = load(address, connections: 4) { client, connection, request in
                let profile = identifiers[(connection * 1_000_003 + request * 7_919) % identifiers.count]
                let response = try client.request("GET", "/v1/profiles/\(profile)?purpose=support", headers: [bearer])
                return response.status == 200 ? 1 : 0
            }
            report("http.read_rps", reads.units / reads.seconds)
            report("http.read_p99_ms", reads.p99 * 1_000, decimals: 2)
            print("http.read_driver: kith-bench client (install wrk for the wrk figure)")
        }
    }

    /// The same reads on a build from before the read policy, audit and sealing, and on this
    /// one, three rounds alternating (this machine's figures drift from run to run by more than
    /// the difference): medians of each, and the cost as a share of the baseline. The baseline
    /// cannot read a sealed store, so it gets its own directory with the same messages ingested.
    /// Returns the last node started, still running.
    private func policyCost(
        _ baselineBinary: String, _ dataDirectory: String, script: String, batches: [[UInt8]], authorization: HTTPHeader
    ) throws -> Process {
        let baselineDirectory = "Benchmarks/.work/http-baseline"
        var (process, port) = try startFreshNode(baselineBinary, baselineDirectory)
        let client = try HTTPClient(address: "127.0.0.1:\(port)")
        for batch in batches {
            guard try client.request("POST", "/v1/batch", headers: [authorization], body: batch).status == 200 else {
                throw BenchmarkFailed("the baseline node refused a batch")
            }
        }
        var baseline: [Double] = [], current: [Double] = []
        for round in 0..<6 {
            let isBaseline = round % 2 == 0
            if round > 0 {
                process.terminate()
                process.waitUntilExit()
                (process, port) = try startNode(isBaseline ? baselineBinary : kithBinary, isBaseline ? baselineDirectory : dataDirectory)
            }
            let rps = try Wrk(seconds: seconds).run(url: "http://127.0.0.1:\(port)", script: script).rps
            if isBaseline { baseline.append(rps) } else { current.append(rps) }
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        report("read.baseline_rps", median(baseline))
        report("read.policy_rps_alternated", median(current))
        report("read.policy_http_cost_pct", (1 - median(current) / median(baseline)) * 100, decimals: 1)
        return process
    }

    struct Result {
        var units: Double
        var seconds: Double
        var p99: Double
    }

    /// Runs `connections` threads for `seconds`, each calling `body` (which returns units done).
    /// Runs `body(client, connection, request)` on `connections` keep-alive connections until
    /// the time is up; a connection stops early when `body` throws.
    private func load(_ address: String, connections: Int, _ body: @escaping @Sendable (HTTPClient, Int, Int) throws -> Int) -> Result {
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
                var request = 0
                while Date() < deadline {
                    let start = DispatchTime.now().uptimeNanoseconds
                    guard let done = try? body(client, connection, request) else { break }
                    latencies.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                    units += done
                    request += 1
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
