import Foundation
import KithJSON
import KithProfile
import KithStore
import KithStoreLMDB
import KithTestSupport
import Synchronization
import Testing

/// The built `kith` binary (KITH_BINARY overrides, e.g. for a release build).
let kithBinary =
    ProcessInfo.processInfo.environment["KITH_BINARY"]
    ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent(".build/debug/kith").path

/// Runs `kith` with `arguments` to completion; returns exit code, stdout and stderr.
func runKith(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: kithBinary)
    process.arguments = arguments
    let output = Pipe(), error = Pipe()
    process.standardOutput = output
    process.standardError = error
    try process.run()
    // Drain both pipes while the child runs: a child that writes more than a pipe holds would
    // otherwise block forever waiting for us to read.
    let errorText = Collected()
    let errorReader = Thread { errorText.set(error.fileHandleForReading.readDataToEndOfFile()) }
    errorReader.start()
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !errorText.isSet { usleep(1_000) }
    return (process.terminationStatus, String(decoding: outputData, as: UTF8.self), String(decoding: errorText.data, as: UTF8.self))
}

/// Runs a program to its end with no input: its exit status and what it printed (standard
/// output and error together; small outputs only, read after a single pipe).
func runProgram(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, text)
}

/// A `kith serve` process on a free loopback port with its own data directory.
final class NodeProcess {
    let dataDirectory: String
    let environment: [String: String]
    /// Where the node's standard error goes (its structured logs).
    let logPath: String
    private(set) var process: Process
    private(set) var port: UInt16 = 0
    /// Extra `kith serve` flags (e.g. --gossip); may change between restarts.
    var arguments: [String]
    /// The peer listener's address, when started with --gossip.
    private(set) var gossipAddress: String?

    init(dataDirectory: String? = nil, environment: [String: String] = [:], arguments: [String] = []) throws {
        self.dataDirectory = dataDirectory ?? FileManager.default.temporaryDirectory.appendingPathComponent("kith-node-\(UUID().uuidString)").path
        self.environment = environment
        self.arguments = arguments
        logPath = self.dataDirectory + ".log"
        process = Process()
        try start()
    }

    var logs: String { String(decoding: FileManager.default.contents(atPath: logPath) ?? Data(), as: UTF8.self) }

    func start() throws {
        process = Process()
        let serve = ["serve", "--data-dir", dataDirectory, "--http", "127.0.0.1:0", "--write-key", "wk", "--token", "tk"] + arguments
        if environment["LD_PRELOAD"] != nil {
            // Started straight from Foundation's Process with a library preloaded (libfaketime),
            // the node saw no arguments at all; through env(1) it sees them.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [kithBinary] + serve
        } else {
            process.executableURL = URL(fileURLWithPath: kithBinary)
            process.arguments = serve
        }
        let output = Pipe()
        process.standardOutput = output
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        try process.run()
        // The first line says where it listens; with --gossip, the second where peers reach it.
        let reader = output.fileHandleForReading
        func readLine() throws -> String {
            var line = ""
            while !line.hasSuffix("\n") {
                let byte = reader.readData(ofLength: 1)
                guard !byte.isEmpty else { throw NodeStartFailed() }
                line += String(decoding: byte, as: UTF8.self)
            }
            return line
        }
        let line = try readLine()
        if arguments.contains("--gossip") {
            let gossip = try readLine()
            guard let range = gossip.range(of: #"127\.0\.0\.1:\d+"#, options: .regularExpression) else { throw NodeStartFailed() }
            gossipAddress = String(gossip[range])
        }
        guard let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
            let port = UInt16(line[range].split(separator: ":")[1])
        else { throw NodeStartFailed() }
        self.port = port
    }

    /// SIGTERM (graceful) or SIGKILL, then wait for the process to end.
    func stop(kill: Bool = false) {
        guard process.isRunning else { return }
        Foundation.kill(process.processIdentifier, kill ? SIGKILL : SIGTERM)
        process.waitUntilExit()
    }

    /// `timeoutSeconds`: how long to wait for the answer (longer for requests the node itself
    /// holds, such as a write waiting for replicas).
    func request(_ method: String, _ path: String, body: [UInt8] = [], headers: [String] = [], timeoutSeconds: Int = 5) throws
        -> (status: Int, headers: [String: String], body: String)?
    {
        let client = try TestClient(port: port, timeoutSeconds: timeoutSeconds)
        var head = "\(method) \(path) HTTP/1.1\r\nHost: kith\r\nConnection: close\r\nContent-Length: \(body.count)\r\n"
        for header in headers { head += header + "\r\n" }
        client.send(Array((head + "\r\n").utf8) + body)
        return client.readResponse()
    }

    /// A counter or gauge from the node's `/metrics`; nil when it is not there.
    func metric(_ name: String) throws -> Int? {
        let text = try request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body ?? ""
        return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Int($0.dropFirst(name.count + 1)) }
    }

    func ingest(_ path: String, _ json: String, headers: [String] = ["Authorization: Basic d2s6"]) throws -> Int? {
        try request("POST", path, body: Array(json.utf8), headers: headers + ["Content-Type: application/json"])?.status
    }

    /// A read for `purpose` (the built-in policy's support purpose sees everything) with the admin token.
    func profile(_ identifier: String, purpose: String = "support", token: String = "tk") throws -> (
        status: Int, headers: [String: String], body: String
    )? {
        let separator = identifier.contains("?") ? "&" : "?"
        return try request("GET", "/v1/profiles/\(identifier)\(separator)purpose=\(purpose)", headers: ["Authorization: Bearer \(token)"])
    }

    deinit {
        stop(kill: true)
        try? FileManager.default.removeItem(atPath: dataDirectory)
        try? FileManager.default.removeItem(atPath: dataDirectory + ".secret")
        try? FileManager.default.removeItem(atPath: dataDirectory + ".keys")  // the data keys, beside the directory
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

struct NodeStartFailed: Error {}

@Suite("kith serve, as a real process", .serialized)
struct KithProcessTests {
    /// The whole path over a socket, once: ingest, then read by any identifier.
    @Test func ingestThenReadByAnyIdentifier() throws {
        let node = try NodeProcess()
        #expect(
            try node.ingest(
                "/v1/identify", #"{"userId":"u-1","anonymousId":"a-1","traits":{"email":"Ana@Example.com","name":"Ana"},"messageId":"m1"}"#) == 200)
        let batch =
            #"{"batch":[{"type":"track","anonymousId":"a-1","event":"Order Completed","properties":{"revenue":19.99},"messageId":"m2"},{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":5},"messageId":"m3"}]}"#
        #expect(try node.ingest("/v1/batch", batch) == 200)
        #expect(try node.ingest("/v1/batch", batch) == 200)  // a client retry: counted once
        let profile = try #require(try node.profile("email:ana%40example.com"))
        #expect(profile.status == 200)
        #expect(profile.headers["request-id"] != nil)
        #expect(profile.body.contains(#""id":"user_id:u-1""#))
        #expect(profile.body.contains(#""Order Completed":{"count":2,"revenue":24.99}"#))
        #expect(try node.profile("user_id:nobody")?.status == 404)
        #expect(try node.request("GET", "/v1/profiles/user_id:u-1")?.status == 401)
    }

    /// The configured queue limit reaches the node (the rule itself is tested in process).
    @Test func shedsLoadWith429AndRetryAfter() throws {
        let node = try NodeProcess(environment: ["KITH_INGEST_QUEUE_LIMIT": "0"])
        let response = try node.request(
            "POST", "/v1/track", body: Array(#"{"userId":"u-1","event":"E"}"#.utf8), headers: ["Authorization: Basic d2s6"])
        #expect(response?.status == 429)
        #expect(response?.headers["retry-after"] == "1")
        #expect(response?.body.contains(#""code":"too_many_requests""#) == true)
    }

    @Test func dataSurvivesARestart() throws {
        let node = try NodeProcess()
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-3","traits":{"city":"Oslo"},"messageId":"r1"}"#) == 200)
        node.stop()
        try node.start()
        #expect(try node.profile("user_id:u-3")?.body.contains(#""city":"Oslo""#) == true)
    }

    /// kill -9 in the middle of streams of batches from four clients at once (so that group
    /// commits carry several requests and overlap with the syncs that answer them): every batch
    /// that was acknowledged is there.
    @Test func everyAcknowledgedMessageSurvivesKillMinus9() throws {
        let node = try NodeProcess()
        let acknowledged = AcknowledgedMessages()
        let done = DispatchSemaphore(value: 0)
        let port = node.port
        let clients = 4
        for clientNumber in 0..<clients {
            Thread {
                var batchNumber = 0
                while batchNumber < 10_000 {
                    let ids = (0..<50).map { "k\(clientNumber)-\(batchNumber)-\($0)" }
                    let messages = ids.map { #"{"type":"track","userId":"u-\#(batchNumber % 8)","event":"E","messageId":"\#($0)"}"# }
                    let body = Array(#"{"batch":[\#(messages.joined(separator: ","))]}"#.utf8)
                    guard let client = try? TestClient(port: port, timeoutSeconds: 2) else { break }
                    client.send(Array("POST /v1/batch HTTP/1.1\r\nAuthorization: Basic d2s6\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
                    guard let response = client.readResponse() else { break }
                    if response.status == 200 { acknowledged.add(ids.map { ($0, "u-\(batchNumber % 8)") }) }
                    batchNumber += 1
                }
                done.signal()
            }.start()
        }
        while acknowledged.count < 2_000 { usleep(10_000) }
        node.stop(kill: true)
        for _ in 0..<clients { done.wait() }
        // A restart applies what the write log holds beyond the store (acknowledged writes the
        // kill kept from their commit); then read the store directly: every acknowledged id
        // must be there.
        try node.start()
        node.stop()
        let secret = try #require(FileManager.default.contents(atPath: node.dataDirectory + ".secret"))
        let store = try LMDBProfileStore(path: node.dataDirectory, configuration: StoreConfiguration(node: 9, forgetKeySecret: Array(secret)))
        var missing = 0
        for (id, user) in acknowledged.all {
            if try !store.hasMessage(id, subject: Identifier(kind: .userId, value: user)!) { missing += 1 }
        }
        #expect(acknowledged.count >= 2_000)
        #expect(missing == 0, "\(missing) acknowledged messages lost")
    }

    /// A live backup is a real LMDB file on disk (the routes' other answers are tested in
    /// process, KithAPITests).
    @Test func aLiveBackupAndTheAdminRoutes() throws {
        let node = try NodeProcess()
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-1","traits":{"name":"Ana"},"messageId":"i1"}"#) == 200)
        let status = try node.request("GET", "/v1/admin/status", headers: ["Authorization: Bearer tk"])
        #expect(status?.status == 200 && status?.body.contains(#""node":"kith-1""#) == true)
        #expect(status?.body.contains(#""lmdbFileBytes":0"#) == false, "the data file's size")
        let backup = node.dataDirectory + "-backup"
        defer { try? FileManager.default.removeItem(atPath: backup) }  // a temporary directory; a leftover is harmless
        let backedUp = try node.request(
            "POST", "/v1/admin/backup", body: Array(#"{"directory":"\#(backup)"}"#.utf8), headers: ["Authorization: Bearer tk"])
        #expect(backedUp?.status == 200)
        let size = try FileManager.default.attributesOfItem(atPath: backup + "/data.mdb")[.size] as? Int
        #expect(size.map { backedUp?.body.contains(#""bytes":\#($0)"#) == true } == true, "the answer names the copy's size")
        let again = try node.request(
            "POST", "/v1/admin/backup", body: Array(#"{"directory":"\#(backup)"}"#.utf8), headers: ["Authorization: Bearer tk"])
        #expect(again?.status == 409, "a backup never overwrites one")
        let metrics = try node.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body ?? ""
        #expect(metrics.contains("kith_http_request_duration_seconds_bucket"))
        // Prometheus's own linter, when installed (Debian's prometheus package; docs/operations.md).
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") {
            let file = node.dataDirectory + "-metrics.txt"
            defer { try? FileManager.default.removeItem(atPath: file) }  // scratch
            #expect(FileManager.default.createFile(atPath: file, contents: Data(metrics.utf8)))
            let lint = try runProgram("/bin/sh", ["-c", "/usr/bin/promtool check metrics < '\(file)'"])
            #expect(lint.status == 0, "promtool check metrics: \(lint.output)")
        }
    }

    /// `kith import` keeps a checkpoint beside the file while batches are accepted; a run that
    /// failed says so (exit 1) and `--resume` starts where the checkpoint says.
    @Test func importResumesFromItsCheckpoint() throws {
        let node = try NodeProcess()
        let host = "127.0.0.1:\(node.port)"
        let lines = (0..<1_200).map { index in #"{"type":"identify","userId":"imp-\#(index)","messageId":"imp-\#(index)","traits":{"n":\#(index)}}"# }
        let file = node.dataDirectory + "-resume.jsonl"
        let checkpoint = file + ".kith-import"
        defer {
            try? FileManager.default.removeItem(atPath: file)  // scratch
            try? FileManager.default.removeItem(atPath: checkpoint)  // scratch
        }
        #expect(FileManager.default.createFile(atPath: file, contents: Data((lines.joined(separator: "\n") + "\n").utf8)))
        #expect(try runKith(["import", file, "--resume", "--host", host, "--write-key", "wk"]).status == 64, "nothing to resume yet")

        // Every batch refused (a wrong write key): the checkpoint stays at the start.
        let refused = try runKith(["import", file, "--host", host, "--write-key", "wrong"])
        #expect(refused.status == 1 && refused.output.contains("imported 0 messages") && refused.error.contains("--resume"), "\(refused)")
        #expect(FileManager.default.contents(atPath: checkpoint) == nil, "no batch was accepted, so no checkpoint was written")

        // A run cut short: a checkpoint after the first 500 lines, as an accepted batch writes it.
        let firstBatch = lines.prefix(500).reduce(0) { $0 + $1.utf8.count + 1 }
        #expect(FileManager.default.createFile(atPath: checkpoint, contents: Data(#"{"offset":\#(firstBatch),"sent":500}"#.utf8)))
        let resumed = try runKith(["import", file, "--resume", "--host", host, "--write-key", "wk"])
        #expect(resumed.status == 0 && resumed.output.contains("resuming at byte \(firstBatch) (500 messages sent before)"), "\(resumed)")
        #expect(resumed.output.contains("imported 700 messages in 2 batches"), "\(resumed.output)")
        #expect(FileManager.default.contents(atPath: checkpoint) == nil, "a finished import removes its checkpoint")
        #expect(
            try node.profile("user_id:imp-1199")?.status == 200 && node.profile("user_id:imp-499")?.status == 404,
            "only lines after the checkpoint were sent")

        let whole = try runKith(["import", file, "--host", host, "--write-key", "wk"])
        #expect(whole.status == 0 && whole.output.contains("imported 1200 messages in 3 batches"), "\(whole.output)")
        #expect(try node.profile("user_id:imp-0")?.status == 200)
        #expect(!whole.error.contains("s left"), "no progress line without a terminal: \(whole.error)")
        // On a terminal: a progress line with the rate, the share of the file done and the time left.
        let onTerminal = try runProgram("/usr/bin/script", ["-qec", "\(kithBinary) import \(file) --host \(host) --write-key wk", "/dev/null"])
        #expect(onTerminal.status == 0 && onTerminal.output.contains("/s · ") && onTerminal.output.contains(" % · "), "\(onTerminal.output)")
        #expect(onTerminal.output.contains("s left") && onTerminal.output.contains("imported 1200 messages"), "\(onTerminal.output)")
    }

    /// `kith completion bash|zsh` prints scripts that complete commands, their subcommands and
    /// options, read by the shells themselves.
    @Test func completionScriptsCompleteInBothShells() throws {
        func shell(_ path: String, _ script: String) throws -> String { try runProgram(path, ["-c", script]).output }
        let bash = try shell(
            "/bin/bash",
            """
            source <(\(kithBinary) completion bash)
            for line in "1 kith st" "2 kith import --r" "2 kith serve --gos" "2 kith profile g" "2 kith help exp"; do
              set -- $line; COMP_CWORD=$1; shift; COMP_WORDS=("$@"); _kith; echo "[${COMPREPLY[*]}]"
            done
            """)
        #expect(bash == "[status]\n[--resume]\n[--gossip]\n[get]\n[export export-subject]\n", "\(bash)")
        let zsh = try shell(
            "/usr/bin/zsh",
            """
            script=/tmp/_kith_$$
            \(kithBinary) completion zsh > $script && zsh -n $script && echo syntax-ok
            compdef() { }; _files() { }; compadd() { shift; print -r -- "$*"; }
            source $script; rm -f $script
            words=(kith import --r); CURRENT=3; _kith
            words=(kith s); CURRENT=2; _kith
            """)
        let lines = zsh.split(separator: "\n").map(String.init)
        #expect(lines.first == "syntax-ok" && lines.count == 3, "\(zsh)")
        #expect(lines.dropFirst().first?.split(separator: " ").contains("--resume") == true, "\(zsh)")
        #expect(lines.last?.split(separator: " ").contains("status") == true, "\(zsh)")
        #expect(try runKith(["completion", "fish"]).status == 64)
        #expect(try runKith(["help", "completion"]).output.contains("USAGE: kith completion bash|zsh"))
    }

    @Test func operatorCommandsAgainstALiveNode() throws {
        let node = try NodeProcess()
        let host = "127.0.0.1:\(node.port)"
        var generator = WorkloadGenerator(seed: 5, customers: 30)
        let lines = (0..<1_200).map { _ in generator.next().jsonText }
        let file = node.dataDirectory + "-import.jsonl"
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(FileManager.default.createFile(atPath: file, contents: Data(lines.joined(separator: "\n").utf8)))
        let imported = try runKith(["import", file, "--host", host, "--write-key", "wk"])
        #expect(imported.status == 0)
        #expect(imported.output.hasPrefix("imported 1200 messages in 3 batches"))

        let status = try runKith(["status", "--host", host, "--token", "tk", "--format", "json"])
        #expect(status.status == 0 && status.output.contains(#""committedMessages":1200"#))
        #expect((try? JSONParser.parse(status.output)) != nil, "--format json prints only JSON: \(status.output)")
        // For people: rows, sizes and durations humanized; by default on a terminal, and when asked.
        let table = try runKith(["status", "--host", host, "--token", "tk", "--format", "table"])
        let rows = table.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.contains { $0.first == "lmdbFileBytes" && ["KiB", "MiB"].contains($0.last) }, "\(table.output)")
        #expect(rows.contains { $0.first == "uptimeSeconds" && $0.last?.hasSuffix("s") == true }, "\(table.output)")
        #expect(rows.contains { $0 == ["committedMessages", "1200"] }, "\(table.output)")
        let terminal = try runProgram("/usr/bin/script", ["-qec", "\(kithBinary) status --host \(host) --token tk", "/dev/null"])
        #expect(
            terminal.status == 0 && terminal.output.contains("committedMessages") && !terminal.output.contains("{"),
            "a table on a terminal: \(terminal.output)")
        let profile = try runKith(["profile", "get", "user_id:u-1", "--purpose", "support", "--host", host, "--token", "tk", "--format", "json"])
        #expect(profile.status == 0 && profile.output.contains(#""id":"user_id:u-1""#))
        let unstated = try runKith(["profile", "get", "user_id:u-1", "--host", host, "--token", "tk"])
        #expect(unstated.status == 1 && unstated.error.contains("name one with ?purpose="))
        #expect(try runKith(["profile", "get", "user_id:nobody", "--host", host, "--token", "tk"]).status == 1)
        #expect(try runKith(["profile", "get", "user_id:u-1", "--host", host]).status == 64)  // no token
        #expect(try runKith(["status", "--host", "127.0.0.1:1", "--token", "tk"]).status == 1)  // nothing listens
        // Addresses as URLs and names, as etcdctl and consul users write them; a clear refusal for TLS.
        for address in ["http://127.0.0.1:\(node.port)", "http://localhost:\(node.port)/", "localhost:\(node.port)"] {
            let viaURL = try runKith(["status", "--host", address, "--token", "tk", "--format", "json"])
            #expect(viaURL.status == 0 && viaURL.output.contains(#""committedMessages":1200"#), "\(address): \(viaURL.error)")
        }
        let tls = try runKith(["status", "--host", "https://127.0.0.1:\(node.port)", "--token", "tk"])
        #expect(tls.status == 64 && tls.error.contains("https:// is not supported"), "\(tls.error)")

        let export = try runKith(["export", "--purpose", "support", "--host", host, "--token", "tk"])
        let ids = export.output.split(separator: "\n").compactMap { (try? JSONParser.parse(String($0)))?["id"]?.stringValue }
        #expect(export.status == 0 && !ids.isEmpty && Set(ids).count == ids.count)
        #expect(ids.contains("user_id:u-1"))
        // Every line is a read for the purpose; without one the export is refused.
        let exported = export.output.split(separator: "\n").compactMap { try? JSONParser.parse(String($0)) }
        #expect(exported.count == ids.count && exported.allSatisfy { $0["purpose"]?.stringValue == "support" })
        let unstatedExport = try runKith(["export", "--host", host, "--token", "tk"])
        #expect(unstatedExport.status == 64 && unstatedExport.error.contains("--purpose"))
        // Resuming from a cursor the node gave: only the profiles after it.
        let page = try #require(try node.request("GET", "/v1/admin/export?purpose=support&limit=5", headers: ["Authorization: Bearer tk"]))
        let cursor = try #require(page.headers["kith-next"] ?? page.headers["Kith-Next"])
        let rest = try runKith(["export", "--purpose", "support", "--cursor", cursor, "--host", host, "--token", "tk"])
        let restIds = rest.output.split(separator: "\n").compactMap { (try? JSONParser.parse(String($0)))?["id"]?.stringValue }
        #expect(rest.status == 0 && restIds == Array(ids.dropFirst(5)), "\(rest.error)")
        let forged = try runKith(["export", "--purpose", "support", "--cursor", "00ff", "--host", host, "--token", "tk"])
        #expect(forged.status == 1 && forged.error.contains("cursor is not one this cluster returned"), "\(forged.error)")

        let backup = node.dataDirectory + "-cli-backup"
        defer { try? FileManager.default.removeItem(atPath: backup) }
        #expect(try runKith(["backup", backup, "--host", host, "--token", "tk"]).status == 0)
        #expect(FileManager.default.fileExists(atPath: backup + "/data.mdb"))
    }

    @Test func logsCarryRequestIdsAndNoPersonalData() throws {
        let node = try NodeProcess(environment: ["KITH_LOG_REQUESTS": "1"])
        let canaries = ["canary-user-7f3a", "canary.person@example.org", "Canary Street 9", "canary-anon-55"]
        let identify =
            #"{"userId":"\#(canaries[0])","anonymousId":"\#(canaries[3])","traits":{"email":"\#(canaries[1])","address":"\#(canaries[2])"}}"#
        #expect(try node.ingest("/v1/identify", identify) == 200)
        #expect(try node.ingest("/v1/track", #"{"userId":"\#(canaries[0])"}"#) == 400)  // an error names no value either
        let read = try node.profile("email:canary.person%40example.org")
        #expect(read?.status == 200)
        #expect(try node.profile("user_id:\(canaries[0])/nothing")?.status == 404)
        node.stop()
        let logs = node.logs
        #expect(logs.contains(#""message":"request""#))
        #expect(logs.contains(#""request.id":"\#(read?.headers["request-id"] ?? "missing")""#))
        #expect(logs.contains(#""http.route":"/v1/profiles/{identifier}""#))
        for canary in canaries + ["canary.person%40example.org"] {
            #expect(!logs.lowercased().contains(canary.lowercased()), "\(canary) appeared in the logs")
        }
    }

    /// Segment's own Python library, unchanged but for its host, talks to Kith (gzip included).
    @Test func segmentsPythonLibraryWorksUnchanged() throws {
        let node = try NodeProcess()
        let script = """
            import segment.analytics as analytics
            errors = []
            analytics.write_key = "wk"
            analytics.host = "http://127.0.0.1:\(node.port)"
            analytics.gzip = True
            analytics.on_error = lambda error, items: errors.append(str(error))
            analytics.identify("py-user-1", {"email": "py@example.com", "name": "Py"}, anonymous_id="py-anon-1")
            analytics.track("py-user-1", "Order Completed", {"revenue": 12.5})
            analytics.page("py-user-1", "Docs", "Home")
            analytics.alias("py-anon-2", "py-user-1")
            # The capitalised category names Segment's consent tooling sends.
            consent = {"consent": {"categoryPreferences": {"Advertising": False, "Analytics": True}}}
            analytics.identify("py-user-1", {"plan": "gold"}, context=consent)
            analytics.flush()
            print("errors:", errors)
            """
        let python = try runProgram("/usr/bin/env", ["python3", "-c", script])
        #expect(python.status == 0 && python.output.contains("errors: []"), "\(python.output)")
        let profile = try #require(try node.profile("anonymous_id:py-anon-2"))
        #expect(profile.body.contains(#""id":"user_id:py-user-1""#))
        #expect(profile.body.contains(#""Order Completed":{"count":1,"revenue":12.5}"#))
        #expect(profile.body.contains(#""channel":"analytics-python""#))
        // Built-in policy: analytics granted shows the plan; advertising denied says why.
        let analytics = try #require(try node.profile("user_id:py-user-1", purpose: "analytics"))
        #expect(analytics.body.contains(#""plan":"gold""#), "\(analytics.body)")
        let advertising = try #require(try node.profile("user_id:py-user-1", purpose: "advertising"))
        #expect(advertising.body.contains(#""reason":"consent_denied""#) && advertising.body.contains(#""consentCategory":"advertising""#))
        #expect(!advertising.body.contains("gold"))
    }

    /// A node whose policy keeps page views and identify records 30 days drops older ones in
    /// the background, while it serves: the profile's totals and history no longer count them;
    /// newer ones stay, and so does the link an old identify made.
    @Test func theRetentionSweepDropsWhatThePolicyNoLongerKeeps() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../cluster-configs/policy.example.json")
        var policy = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: example)) as? [String: Any])
        policy["retention"] = [
            ["events": ["Page Viewed"], "days": 30, "purpose": "support"], ["messages": ["identify"], "days": 30, "purpose": "support"],
        ]
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-policy-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }  // a temporary file; a leftover is harmless
        #expect(FileManager.default.createFile(atPath: path, contents: try JSONSerialization.data(withJSONObject: policy)))
        let node = try NodeProcess(environment: ["KITH_POLICY_FILE": path, "KITH_RETENTION_SWEEP_INTERVAL": "1"])
        let old = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-400 * 86_400))
        let new = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-5 * 86_400))
        let calls = [("p-old", old, "Page Viewed"), ("p-new", new, "Page Viewed"), ("o-old", old, "Order Completed")].map { id, time, event in
            #"{"type":"track","userId":"u-r","event":"\#(event)","messageId":"\#(id)","timestamp":"\#(time)"}"#
        }
        let identify = #"{"type":"identify","userId":"u-r","anonymousId":"a-r","messageId":"i-old","timestamp":"\#(old)"}"#
        #expect(try node.ingest("/v1/batch", #"{"batch":[\#((calls + [identify]).joined(separator: ","))]}"#) == 200)
        #expect(try eventually(10) { try messageCount(node, "u-r") == 2 }, "the old page view and identify expire; the old order has no rule")
        #expect(try node.profile("anonymous_id:a-r")?.body.contains(#""id":"user_id:u-r""#) == true, "the link stays")
        let profile = try #require(try node.profile("user_id:u-r")?.body)
        #expect(!profile.contains("p-old") && profile.contains("p-new") && profile.contains("o-old"), "\(profile)")
        #expect(eventually(10) { node.logs.contains("retention pass") })
        let metrics = try node.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body ?? ""
        #expect(metrics.contains("kith_retention_events_dropped_total 1\n") && !metrics.contains("kith_retention_passes_total 0\n"), "\(metrics)")
        #expect(metrics.contains("kith_retention_messages_dropped_total 1\n"), "\(metrics)")
    }

    /// With `KITH_COMPACT_ON_START` a restarted node replaces its data file with a compacting
    /// copy before it serves, says so, and serves what it held.
    @Test func aNodeCompactsItsDataFileAtStart() throws {
        let node = try NodeProcess(environment: ["KITH_COMPACT_ON_START": "1"])
        #expect(!node.logs.contains("compacted the data file"), "nothing to compact in a new directory")
        let calls = (0..<300).map { n in
            #"{"type":"identify","userId":"c-\#(n)","messageId":"c-m-\#(n)","traits":{"email":"c\#(n)@example.com","plan":"plan-\#(n % 7)"}}"#
        }
        #expect(try node.ingest("/v1/batch", #"{"batch":[\#(calls.joined(separator: ","))]}"#) == 200)
        let before = try #require(try node.profile("email:c42@example.com"))
        #expect(before.status == 200)
        node.stop()
        try node.start()
        let line = try #require(node.logs.split(separator: "\n").first { $0.contains("compacted the data file") })
        let sizes = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        let (bytesBefore, bytesAfter) = (sizes?["bytesBefore"] as? Int ?? 0, sizes?["bytesAfter"] as? Int ?? 0)
        #expect(bytesAfter > 0 && bytesAfter < bytesBefore, "\(line)")
        let after = try #require(try node.profile("email:c42@example.com"))
        #expect(after.status == 200 && after.body == before.body)
        let (used, file) = (try #require(try node.metric("kith_lmdb_used_bytes")), try #require(try node.metric("kith_lmdb_size_bytes")))
        #expect(used > 0 && used <= file && file == bytesAfter, "used \(used), file \(file), compacted to \(bytesAfter)")
        #expect(try node.ingest("/v1/identify", #"{"userId":"c-42","traits":{"plan":"gold"}}"#) == 200)
        #expect(try node.profile("user_id:c-42")?.body.contains(#""plan":"gold""#) == true)
    }

    /// A node whose data file is mostly free pages after a sweep compacts it while it serves:
    /// it says so, the file shrinks, and it serves what it held. Writes go on throughout, from a
    /// client of their own: every one acknowledged is counted in the profile afterwards.
    @Test func aNodeCompactsItsDataFileWhileServing() throws {
        let node = try NodeProcess(environment: ["KITH_RETENTION_SWEEP_INTERVAL": "1", "KITH_COMPACTION_MINIMUM_FREE_BYTES": "0"])
        let calls = (0..<400).map { n in
            #"{"type":"track","userId":"w-\#(n % 40)","event":"Product Viewed","messageId":"w-m-\#((n * 37) % 400)","properties":{"sku":"sku-\#(n)"}}"#
        }
        #expect(try node.ingest("/v1/batch", #"{"batch":[\#(calls.joined(separator: ","))]}"#) == 200)
        let before = try #require(try node.profile("user_id:w-7"))
        #expect(before.status == 200)
        let (port, stop, done) = (node.port, ManagedAtomicFlag(), DispatchSemaphore(value: 0))
        let acknowledged = Mutex(0)
        Thread {
            defer { done.signal() }
            var number = 0
            while !stop.isSet, number < 5_000 {
                let body = Array(#"{"userId":"w-live","event":"Page Viewed","messageId":"live-\#(number)"}"#.utf8)
                number += 1
                guard let connection = try? TestClient(port: port, timeoutSeconds: 2) else { continue }
                connection.send(Array("POST /v1/track HTTP/1.1\r\nAuthorization: Basic d2s6\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
                if connection.readResponse()?.status == 200 { acknowledged.withLock { $0 += 1 } }
            }
        }.start()
        let compacted = eventually(20) { node.logs.contains("compacted the data file while serving") }
        usleep(200_000)  // writes after the swap too
        stop.set()
        done.wait()
        #expect(compacted, "\(node.logs)")
        let line = try #require(node.logs.split(separator: "\n").first { $0.contains("compacted the data file while serving") })
        let sizes = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        let (bytesBefore, bytesAfter) = (sizes?["bytesBefore"] as? Int ?? 0, sizes?["bytesAfter"] as? Int ?? 0)
        #expect(bytesAfter > 0 && bytesAfter < bytesBefore, "\(line)")
        #expect(try #require(try node.metric("kith_data_file_compactions_total")) >= 1)
        let after = try #require(try node.profile("user_id:w-7"))
        #expect(after.status == 200 && after.body == before.body)
        let written = acknowledged.withLock { $0 }
        #expect(written > 0)
        #expect(try messageCount(node, "w-live") == written)
        // And after a restart, from the swapped file.
        node.stop()
        try node.start()
        #expect(try messageCount(node, "w-live") == written)
        #expect(try node.profile("user_id:w-7")?.body == before.body)
    }

    /// `kith compact` (as `etcdctl defrag`) makes a node swap a compacting copy in at once,
    /// whatever its rule says, and prints the file's sizes; it asks for the admin token.
    @Test func kithCompactCompactsTheDataFileNow() throws {
        let node = try NodeProcess(environment: ["KITH_COMPACT_WHILE_SERVING": "0"])
        let calls = (0..<300).map { n in
            #"{"type":"identify","userId":"k-\#(n)","messageId":"k-m-\#(n)","traits":{"plan":"plan-\#(n % 7)"}}"#
        }
        #expect(try node.ingest("/v1/batch", #"{"batch":[\#(calls.joined(separator: ","))]}"#) == 200)
        let before = try #require(try node.profile("user_id:k-42"))
        let refused = try runKith(["compact", "--host", "127.0.0.1:\(node.port)", "--token", "nope"])
        #expect(refused.status != 0 && refused.error.contains("401"), "\(refused.output)\(refused.error)")
        let run = try runKith(["compact", "--host", "127.0.0.1:\(node.port)", "--token", "tk"])
        #expect(run.status == 0, "\(run.output)\(run.error)")
        let sizes = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any]
        let (bytesBefore, bytesAfter) = (sizes?["bytesBefore"] as? Int ?? 0, sizes?["bytesAfter"] as? Int ?? 0)
        #expect(bytesAfter > 0 && bytesAfter < bytesBefore, "\(run.output)")
        #expect(node.logs.contains("compacted the data file while serving"))
        #expect(try node.metric("kith_lmdb_size_bytes") == bytesAfter)
        #expect(try node.profile("user_id:k-42")?.body == before.body)
    }

    /// Without retention rules the sweep still runs, stores the ledger blocks and identifier
    /// rows ingest left plain deflated, and repacks rows; the customer's events all stay.
    @Test func theSweepDeflatesLedgerBlocksWithoutRetentionRules() throws {
        let node = try NodeProcess(environment: ["KITH_RETENTION_SWEEP_INTERVAL": "1"])
        // MessageIds out of order, as random ones arrive: rows land inside blocks, which stay plain.
        let calls = (0..<120).map { n in
            #"{"type":"track","userId":"u-b","event":"Product Viewed","messageId":"b-\#((n * 37) % 120)","properties":{"sku":"sku-\#(n)"}}"#
        }
        #expect(try node.ingest("/v1/batch", #"{"batch":[\#(calls.joined(separator: ","))]}"#) == 200)
        let deflated = { () throws -> Bool in
            let metrics = try node.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body ?? ""
            return ["kith_ledger_blocks_deflated_total", "kith_identifier_rows_deflated_total", "kith_rows_repacked_total"].allSatisfy {
                metrics.contains($0) && !metrics.contains("\($0) 0\n")
            }
        }
        #expect(try eventually(10) { try deflated() })
        #expect(try messageCount(node, "u-b") == 120)
    }

    /// `kith policy check --store` lists the consent names the node's customers hold that the
    /// policy does not map, and how many profiles hold each.
    @Test func policyCheckListsTheConsentNamesThePolicyDoesNotMap() throws {
        let node = try NodeProcess()
        let policy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../cluster-configs/policy.example.json")
        let check = ["policy", "check", policy.path, "--store", "--host", "127.0.0.1:\(node.port)", "--token", "tk"]
        let clean = try runKith(check)
        #expect(clean.status == 0 && clean.output.contains("every consent name in the store maps"), "\(clean.output)\(clean.error)")
        #expect(clean.output.contains("consent advertising: answers to ad_personalization, ad_storage, ad_user_data, advertising, c0004"))
        for (user, preferences) in [("u-1", #"{"Advertising":true,"Newsletter":false}"#), ("u-2", #"{"newsletter":true,"C0004":false}"#)] {
            let message = #"{"userId":"\#(user)","context":{"consent":{"categoryPreferences":\#(preferences)}}}"#
            #expect(try node.ingest("/v1/identify", message) == 200)
        }
        let found = try runKith(check)
        #expect(found.status == 1, "\(found.output)\(found.error)")
        #expect(found.output.contains("  Newsletter (1)\n  newsletter (1)\n") && !found.output.contains("Advertising ("))
    }

    /// A node restarted under tighter identity rules splits the profiles built under the old
    /// ones before it serves, and a profile's links say which rule keeps an identifier out.
    @Test func aRestartUnderNewIdentityRulesRebuildsTheProfiles() throws {
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("kith-rules-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: config) }  // a temporary file; a leftover is harmless
        func rules(version: Int, anonymous: Int) {
            let text = #"{"identity":{"rulesVersion":\#(version),"limits":{"user_id":1,"anonymous_id":\#(anonymous)}}}"#
            #expect(FileManager.default.createFile(atPath: config, contents: Data(text.utf8)))
        }
        rules(version: 1, anonymous: 5)
        let node = try NodeProcess(arguments: ["--config", config])
        for index in 0..<3 {
            let message =
                #"{"userId":"u-1","anonymousId":"tablet-\#(index)","messageId":"t\#(index)","timestamp":"2026-03-0\#(index + 1)T10:00:00Z"}"#
            #expect(try node.ingest("/v1/identify", message) == 200)
        }
        #expect(try node.profile("user_id:u-1/identifiers")?.body.contains(#""anonymous_id":["tablet-0","tablet-1","tablet-2"]"#) == true)
        node.stop()
        rules(version: 2, anonymous: 1)
        try node.start()
        #expect(try node.profile("user_id:u-1/identifiers")?.body.contains(#""anonymous_id":["tablet-0"]"#) == true)
        #expect(try node.profile("anonymous_id:tablet-2")?.body.contains(#""id":"anonymous_id:tablet-2""#) == true)
        let links = try node.request("GET", "/v1/profiles/user_id:u-1/links", headers: ["Authorization: Bearer tk"])?.body ?? ""
        #expect(
            links.contains(#""to":"anonymous_id:tablet-2","active":true,"kept":false,"rule":"limit: a profile holds at most 1 anonymous_id""#),
            "\(links)")
        #expect(node.logs.contains("profiles under identity rules version 2"))
    }

    /// `kith config check` says where each kind of identifier comes from, and refuses a
    /// configuration naming a kind there is not.
    @Test func configCheckPrintsTheIdentifierSourcesInForce() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-identity-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }  // a temporary file; a leftover is harmless
        #expect(
            FileManager.default.createFile(
                atPath: path,
                contents: Data(
                    #"{"identity":{"phoneRegion":"GB","kinds":{"loyalty_card":"digits"},"sources":{"traits.mobile":"phone","traits.card":"loyalty_card"}}}"#
                        .utf8)))
        let check = try runKith(["config", "check", path])
        #expect(check.status == 0, "\(check.error)")
        #expect(check.output.contains("  phone from traits.phone, context.traits.phone, traits.mobile, externalIds type phone\n"))
        #expect(check.output.contains("national phone numbers read as +44 (GB)"))
        #expect(check.output.contains("  identity rules version 0: at most 1 user_id a profile\n"), "\(check.output)")
        #expect(
            check.output.contains("  loyalty_card (custom kind, values digits) from traits.card, externalIds type loyalty_card\n"), "\(check.output)")
        #expect(
            check.output.contains(
                "  a profile is named by its user_id, then email, then phone, then device_id, then anonymous_id, then loyalty_card\n"))
        #expect(FileManager.default.createFile(atPath: path, contents: Data(#"{"identity":{"sources":{"traits.card":"loyalty"}}}"#.utf8)))
        let refused = try runKith(["config", "check", path])
        #expect(refused.status == 1 && refused.error.contains("names kind \"loyalty\""), "\(refused.error)")
    }

    @Test func theCommandLineSpeaksSysexits() throws {
        let help = try runKith(["--help"])
        #expect(help.status == 0 && help.output.contains("SUBCOMMANDS:"))
        #expect(try runKith(["serve", "--help"]).output.contains("USAGE: kith serve"))
        #expect(try runKith(["version"]).output.hasPrefix("kith "))
        let unknown = try runKith(["frobnicate"])
        #expect(unknown.status == 64 && unknown.error.contains("unknown command"))
        #expect(try runKith(["serve", "--bogus", "x"]).status == 64)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-bad-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(#"{"htp":"127.0.0.1:1"}"#.utf8)))
        let badConfig = try runKith(["serve", "--config", path])
        #expect(badConfig.status == 64 && badConfig.error.contains("unknown setting \"htp\""))
        #expect(try runKith(["config", "check", path]).status == 1)
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        #expect(try runKith(["config", "check", repository.appendingPathComponent("cluster-configs/single-node.json").path]).status == 0)
        for command in ["status", "profile", "import", "export", "backup", "config"] {
            let help = try runKith(["help", command])
            #expect(help.status == 0 && help.output.contains("USAGE: kith \(command)"), "help for \(command)")
        }
    }
}

/// Bytes read on another thread.
final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Data?
    func set(_ data: Data) { lock.withLock { value = data } }
    var isSet: Bool { lock.withLock { value != nil } }
    var data: Data { lock.withLock { value ?? Data() } }
}

/// (messageId, userId) pairs the node acknowledged, shared with the sending thread.
final class AcknowledgedMessages: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [(String, String)] = []
    func add(_ more: [(String, String)]) { lock.withLock { messages += more } }
    var count: Int { lock.withLock { messages.count } }
    var all: [(String, String)] { lock.withLock { messages } }
}
