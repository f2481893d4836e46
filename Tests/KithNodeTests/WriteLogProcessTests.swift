import Foundation
import KithCRDT
import KithProfile
import KithStore
import KithStoreLMDB
import KithTestSupport
import Testing

@testable import KithNode

/// A real node killed with SIGKILL at random moments, again and again, while clients write:
/// during ingest, during the writer's apply and commit, during the log's rotation (segments of
/// 4 KB rotate after nearly every commit). Every acknowledged message must be there at the end.
@Suite("Write-ahead log, real processes", .serialized)
struct WriteLogProcessTests {
    @Test func noAcknowledgedMessageIsLostAcrossFiftyKills() throws {
        let node = try NodeProcess(environment: ["KITH_WRITE_LOG_SEGMENT_BYTES": "4096"])
        let acknowledged = AcknowledgedMessages()
        var generator = SplitMix64(seed: UInt64(ProcessInfo.processInfo.environment["KITH_KILL_SEED"] ?? "") ?? 25)
        let cycles = Int(ProcessInfo.processInfo.environment["KITH_KILL_CYCLES"] ?? "") ?? 50
        var replays = 0
        for cycle in 0..<cycles {
            if cycle > 0 { try node.start() }
            if node.logs.contains("applied the write log") { replays += 1 }
            let port = node.port
            let stop = ManagedAtomicFlag()
            let done = DispatchGroup()
            for client in 0..<3 {
                done.enter()
                Thread {
                    defer { done.leave() }
                    var number = 0
                    while !stop.isSet, number < 2_000 {
                        // Single identifies and small batches, about eight customers.
                        let count = client == 0 ? 1 : 5
                        let ids = (0..<count).map { "c\(cycle)-\(client)-\(number)-\($0)" }
                        let user = "u-\((cycle + number) % 8)"
                        let messages = ids.map { #"{"type":"identify","userId":"\#(user)","traits":{"n":\#(number)},"messageId":"\#($0)"}"# }
                        let body = Array(#"{"batch":[\#(messages.joined(separator: ","))]}"#.utf8)
                        guard let connection = try? TestClient(port: port, timeoutSeconds: 2) else { return }
                        connection.send(
                            Array("POST /v1/batch HTTP/1.1\r\nAuthorization: Basic d2s6\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
                        guard let response = connection.readResponse() else { return }
                        if response.status == 200 { acknowledged.add(ids.map { ($0, user) }) }
                        number += 1
                    }
                }.start()
            }
            // A moment between 20 and 220 ms into the load.
            usleep(useconds_t(20_000 + Int(generator.next() % 200_000)))
            node.stop(kill: true)
            stop.set()
            done.wait()
        }
        // Once more, to replay what the last kill left, then a graceful stop to read the store.
        try node.start()
        let read = try node.request("GET", "/v1/profiles/user_id:u-1?purpose=support", headers: ["Authorization: Bearer tk"])
        #expect(read?.status == 200)
        node.stop()
        let secret = try #require(FileManager.default.contents(atPath: node.dataDirectory + ".secret"))
        let store = try LMDBProfileStore(path: node.dataDirectory, configuration: StoreConfiguration(node: 9, forgetKeySecret: Array(secret)))
        var missing: [String] = []
        for (id, user) in acknowledged.all where try !store.hasMessage(id, subject: Identifier(kind: .userId, value: user)!) {
            missing.append(id)
        }
        #expect(acknowledged.count >= cycles * 20, "only \(acknowledged.count) messages acknowledged in \(cycles) cycles")
        #expect(missing.isEmpty, "\(missing.count) acknowledged messages lost, e.g. \(missing.prefix(5))")
        // Kills land before commits often enough that restarts had records to apply.
        #expect(replays > 0, "no restart applied records from the write log")
        #expect(!node.logs.contains("\"level\":\"error\""), "\(node.logs.suffix(2_000))")
    }

    /// A log whose tail a crash left torn: the node applies the whole records before the damage,
    /// nothing after it, says in its log what it dropped, and serves.
    @Test func aTornLogTailIsReportedAndTheRecordsBeforeItApplied() throws {
        let node = try NodeProcess()
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-torn","traits":{"n":1},"messageId":"torn-1"}"#) == 200)
        node.stop()
        // What a crash between a sync and the commit, then a torn append, leaves: one whole
        // record the store does not hold, then half of another.
        let tornBytes = try Self.appendToLog(of: node, ["torn-2", "torn-3"], user: "u-torn", keepingOfLast: 0.5)

        try node.start()
        #expect(node.logs.contains("the write log ends early"), "\(node.logs)")
        #expect(node.logs.contains(#""droppedBytes":\#(tornBytes)"#), "\(node.logs)")
        #expect(node.logs.contains(#""records":1"#), "\(node.logs)")
        #expect(try node.profile("user_id:u-torn")?.status == 200)
        node.stop()
        let secret = try #require(FileManager.default.contents(atPath: node.dataDirectory + ".secret"))
        let store = try LMDBProfileStore(path: node.dataDirectory, configuration: StoreConfiguration(node: 9, forgetKeySecret: Array(secret)))
        let subject = Identifier(kind: .userId, value: "u-torn")!
        #expect(try store.hasMessage("torn-1", subject: subject) && store.hasMessage("torn-2", subject: subject))
        #expect(try !store.hasMessage("torn-3", subject: subject))
    }

    /// A node restarted with the log turned off still applies what the log holds (answered
    /// writes a crash kept from the store), then does without it.
    @Test func turningTheLogOffStillAppliesWhatItHolds() throws {
        let node = try NodeProcess()
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-off","traits":{"n":1},"messageId":"off-1"}"#) == 200)
        node.stop()
        let directory = node.dataDirectory + "/wal"
        _ = try Self.appendToLog(of: node, ["off-2"], user: "u-off")
        let subject = Identifier(kind: .userId, value: "u-off")!

        let without = try NodeProcess(dataDirectory: node.dataDirectory, environment: ["KITH_WRITE_AHEAD_LOG": "0"])
        #expect(without.logs.contains(#""records":1"#), "\(without.logs)")
        #expect(!FileManager.default.fileExists(atPath: directory))
        #expect(try without.ingest("/v1/identify", #"{"userId":"u-off","traits":{"n":3},"messageId":"off-3"}"#) == 200)
        without.stop()
        let secret = try #require(FileManager.default.contents(atPath: node.dataDirectory + ".secret"))
        let store = try LMDBProfileStore(path: node.dataDirectory, configuration: StoreConfiguration(node: 9, forgetKeySecret: Array(secret)))
        for id in ["off-1", "off-2", "off-3"] { #expect(try store.hasMessage(id, subject: subject), "\(id)") }
    }

    /// Writes are answered before their commit; a read that follows the answer on the same node
    /// still sees the write (it waits for the commit), with or without the write's token.
    @Test func aReadAfterAnAcknowledgedWriteSeesIt() throws {
        let node = try NodeProcess()
        defer { node.stop() }
        for number in 0..<150 {
            let body = Array(#"{"userId":"u-read","traits":{"n":\#(number)},"messageId":"r-\#(number)"}"#.utf8)
            let write = try node.request("POST", "/v1/identify", body: body, headers: ["Authorization: Basic d2s6"])
            #expect(write?.status == 200)
            let headers = ["Authorization: Bearer tk"] + (number % 2 == 0 ? [] : ["Kith-Session: " + (write?.headers["kith-session"] ?? "")])
            let read = try node.request("GET", "/v1/profiles/user_id:u-read/traits?purpose=support", headers: headers)
            #expect(read?.status == 200)
            guard read?.body.contains(#""n":\#(number)"#) == true else {
                Issue.record("write \(number) was not visible to the read after it: \(read?.body ?? "no answer")")
                return
            }
        }
        // Every write was answered after a sync of the log.
        let metrics = try node.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body ?? ""
        let syncs = metrics.split(separator: "\n").first { $0.hasPrefix("kith_write_log_syncs_total ") }.flatMap { Int($0.split(separator: " ")[1]) }
        #expect((syncs ?? 0) >= 150, "\(metrics.prefix(400))")
        // The status counts them all, and shows the log holding their records.
        let status = try node.request("GET", "/v1/admin/status", headers: ["Authorization: Bearer tk"])?.body ?? ""
        #expect(status.contains(#""committedMessages":150"#), "\(status)")
        #expect(!status.contains(#""writeLogBytes":0"#) && status.contains(#""writeLogBytes":"#), "\(status)")
    }
}

extension WriteLogProcessTests {
    /// Appends records of one identify each (message ids `ids`, about `user`) to the log of a
    /// stopped node, numbered after its last record, the last cut to `keepingOfLast` of its
    /// bytes (1: whole). Returns how many bytes of the last record it wrote.
    static func appendToLog(of node: NodeProcess, _ ids: [String], user: String, keepingOfLast: Double = 1) throws -> Int {
        let directory = node.dataDirectory + "/wal"
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: directory).first { $0.hasSuffix(".log") })
        let start = try #require(UInt64(segment.dropLast(4), radix: 16))
        let held = try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory + "/" + segment)))
        let next = (WriteLogFormat.scan(held, first: start).records.last?.sequence ?? start - 1) + 1
        let received = MessageTimes(timestamp: 1_700_000_000_000, originalTimestamp: nil, sentAt: nil, receivedAt: 1_700_000_000_000)
        let subject = try #require(Identifier(kind: .userId, value: user))
        var bytes: [UInt8] = []
        var lastBytes = 0
        for (offset, id) in ids.enumerated() {
            let record = WriteLogFormat.record(
                sequence: next + UInt64(offset),
                deltas: [ProfileDelta(messageId: id, type: .identify, subject: subject, channel: "test", times: received)])
            lastBytes = offset == ids.count - 1 ? Int(Double(record.count) * keepingOfLast) : record.count
            bytes += record.prefix(lastBytes)
        }
        let handle = try #require(FileHandle(forWritingAtPath: directory + "/" + segment))
        handle.seekToEndOfFile()
        handle.write(Data(bytes))
        handle.closeFile()
        return lastBytes
    }
}

/// A flag one thread sets and others read.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
