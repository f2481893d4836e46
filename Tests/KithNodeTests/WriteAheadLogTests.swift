import Foundation
import KithCRDT
import KithProfile
import KithStore
import KithStoreLMDB
import Testing

@testable import KithNode

/// The write-ahead log's files: what recovery gives back after a crash left them cut at any
/// byte or damaged in their tail (docs/storage.md, "The write-ahead log").
@Suite("Write-ahead log")
struct WriteAheadLogTests {
    static func delta(_ messageId: String, user: String = "u-1") -> ProfileDelta {
        ProfileDelta(
            messageId: messageId, type: .identify, subject: Identifier(kind: .userId, value: user)!, channel: "test",
            times: MessageTimes(timestamp: 1, originalTimestamp: nil, sentAt: nil, receivedAt: 1))
    }

    static func scratch() -> String {
        let path = NSTemporaryDirectory() + "kith-wal-\(UUID().uuidString)"
        try? FileManager.default.removeItem(atPath: path)  // a leftover of an earlier run, if any
        return path
    }

    /// A log of `count` records of one to three messages each; returns the directory and the
    /// message ids per record.
    static func written(_ count: Int, segmentLimit: Int = 32 << 20) throws -> (String, [[String]]) {
        let directory = scratch()
        _ = try WriteAheadLog.recover(directory: directory, after: 0)
        let log = try WriteAheadLog(directory: directory, after: 0, segmentLimit: segmentLimit)
        var records: [[String]] = []
        for index in 0..<count {
            let ids = (0...(index % 3)).map { "m\(index)-\($0)" }
            let sequence = log.append(ids.map { delta($0) })
            #expect(sequence == UInt64(index + 1))
            records.append(ids)
            // A rotation point every few records (the writer calls this after each commit).
            if index % 4 == 3 {
                log.flush()
                try log.store(appliedThrough: sequence)
            }
        }
        log.flush()
        try log.sync()
        return (directory, records)
    }

    static func segmentFiles(_ directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".log") }.sorted()
    }

    @Test("records come back in order, each request's messages together")
    func roundTrip() throws {
        let (directory, records) = try Self.written(10)
        let recovery = try WriteAheadLog.recover(directory: directory, after: 0)
        #expect(recovery.damage == nil)
        #expect(recovery.records.map(\.sequence) == Array(1...10))
        #expect(recovery.records.map { $0.deltas.map(\.messageId) } == records)
        // Only records after the store's applied point are given.
        #expect(try WriteAheadLog.recover(directory: directory, after: 7).records.map(\.sequence) == [8, 9, 10])
    }

    @Test("a log cut at any byte gives back exactly the whole records before the cut")
    func cutAnywhere() throws {
        let (directory, records) = try Self.written(6)
        let file = directory + "/" + (try Self.segmentFiles(directory)).last!
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        // Where each record ends.
        let scan = WriteLogFormat.scan(bytes, first: 1)
        let ends = scan.records.map(\.payload.upperBound)
        #expect(ends.count == 6 && ends.last == bytes.count)
        for cut in 0...bytes.count {
            let copy = Self.scratch()
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
            try Data(bytes[..<cut]).write(to: URL(fileURLWithPath: copy + "/" + URL(fileURLWithPath: file).lastPathComponent))
            let recovery = try WriteAheadLog.recover(directory: copy, after: 0)
            let whole = ends.filter { $0 <= cut }.count
            #expect(recovery.records.map { $0.deltas.map(\.messageId) } == Array(records.prefix(whole)), "cut at \(cut)")
            // A cut inside a record is reported, with the bytes it set aside; at a boundary there is nothing to report.
            let atBoundary = cut == 0 || ends.contains(cut)
            #expect((recovery.damage == nil) == atBoundary, "cut at \(cut): \(recovery.damage ?? "no damage")")
            #expect(recovery.droppedBytes == cut - (whole == 0 ? 0 : ends[whole - 1]), "cut at \(cut)")
            // Once the store holds what was recovered, the log continues after it, and the next
            // recovery reads the new record whole.
            let log = try WriteAheadLog(directory: copy, after: recovery.lastSequence)
            _ = log.append([Self.delta("after")])
            log.flush()
            try log.sync()
            let again = try WriteAheadLog.recover(directory: copy, after: recovery.lastSequence)
            #expect(again.damage == nil, "cut at \(cut)")
            #expect(again.records.map(\.sequence) == [UInt64(whole + 1)], "cut at \(cut)")
            #expect(again.records.last?.deltas.map(\.messageId) == ["after"])
            try? FileManager.default.removeItem(atPath: copy)  // scratch space only
        }
    }

    @Test("a flipped byte in the tail ends the log before the record that holds it")
    func flippedByte() throws {
        let (directory, _) = try Self.written(8)
        let file = directory + "/" + (try Self.segmentFiles(directory)).last!
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        let scan = WriteLogFormat.scan(original, first: 1)
        var generator = SplitMix64(seed: 7)
        for _ in 0..<200 {
            // A byte in the last three records, header or payload.
            let from = scan.records[scan.records.count - 3].payload.lowerBound - WriteLogFormat.headerSize
            let position = from + Int(generator.next() % UInt64(original.count - from))
            var bytes = original
            bytes[position] ^= UInt8(1 + generator.next() % 255)
            let damagedRecord = scan.records.firstIndex { $0.payload.upperBound > position }!
            let copy = Self.scratch()
            try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: copy + "/" + URL(fileURLWithPath: file).lastPathComponent))
            let recovery = try WriteAheadLog.recover(directory: copy, after: 0)
            let firstInFile = scan.records[0].sequence
            #expect(recovery.records.map(\.sequence) == Array(firstInFile..<firstInFile + UInt64(damagedRecord)), "byte \(position)")
            #expect(recovery.damage != nil)
            // The damaged bytes are kept beside the log, out of its way.
            #expect(FileManager.default.fileExists(atPath: copy + "/" + URL(fileURLWithPath: file).lastPathComponent + ".damaged"))
            try? FileManager.default.removeItem(atPath: copy)  // scratch space only
        }
    }

    @Test("damage in one segment sets aside every later segment")
    func damageStopsTheLog() throws {
        // Two segments, as a crash between a rotation and the removal of the old one leaves.
        let directory = Self.scratch()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func segment(_ first: UInt64, _ name: String) -> [UInt8] {
            (first..<first + 3).flatMap { WriteLogFormat.record(sequence: $0, deltas: [Self.delta("m\($0)")]) }
        }
        let first = directory + "/0000000000000001.log", second = directory + "/0000000000000004.log"
        var bytes = segment(1, first)
        try Data(bytes).write(to: URL(fileURLWithPath: first))
        try Data(segment(4, second)).write(to: URL(fileURLWithPath: second))
        #expect(try WriteAheadLog.recover(directory: directory, after: 0).records.map(\.sequence) == [1, 2, 3, 4, 5, 6])
        bytes[bytes.count - 1] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: first))
        let recovery = try WriteAheadLog.recover(directory: directory, after: 0)
        #expect(recovery.damage != nil)
        #expect(recovery.records.map(\.sequence) == [1, 2])
        #expect(try Self.segmentFiles(directory) == ["0000000000000001.log"])
        #expect(FileManager.default.fileExists(atPath: second + ".damaged"))
    }

    @Test("a log that starts after a gap is not applied")
    func gapBeforeTheLog() throws {
        let (directory, _) = try Self.written(3)
        let recovery = try WriteAheadLog.recover(directory: directory, after: 0)
        #expect(recovery.records.count == 3)
        // A store that applied nothing, and a log whose first segment begins at record 5.
        let copy = Self.scratch()
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        let log = try WriteAheadLog(directory: copy, after: 4)
        _ = log.append([Self.delta("late")])
        log.flush()
        try log.sync()
        let late = try WriteAheadLog.recover(directory: copy, after: 0)
        #expect(late.records.isEmpty)
        #expect(late.damage?.contains("applied only through 0") == true)
    }

    @Test("the writer commits when a task is next, when old, full or idle; never while empty")
    func batching() {
        let batching = WriteLogBatching(maximumAgeNanoseconds: 20, idleNanoseconds: 5, maximumMessages: 100)
        #expect(batching.decide(.task, age: 0, messages: 3, watched: true) == .commit)
        #expect(batching.decide(.request(messages: 500), age: 0, messages: 0, watched: true) == .take)
        #expect(batching.decide(.request(messages: 50), age: 10, messages: 40, watched: true) == .take)
        #expect(batching.decide(.request(messages: 61), age: 10, messages: 40, watched: true) == .commit)
        #expect(batching.decide(.request(messages: 1), age: 20, messages: 40, watched: true) == .commit)
        #expect(batching.decide(.nothing(idleNanoseconds: 0), age: 4, messages: 1, watched: true) == .wait(nanoseconds: 5))
        #expect(batching.decide(.nothing(idleNanoseconds: 2), age: 18, messages: 1, watched: true) == .wait(nanoseconds: 2))
        #expect(batching.decide(.nothing(idleNanoseconds: 5), age: 6, messages: 1, watched: true) == .commit)
        #expect(batching.decide(.nothing(idleNanoseconds: 0), age: 0, messages: 0, watched: true) == .commit)
        // Nobody waiting for a commit: the transaction may grow older, up to the longer limit.
        let unwatched = WriteLogBatching(
            maximumAgeNanoseconds: 20, unwatchedMaximumAgeNanoseconds: 80, idleNanoseconds: 5, maximumMessages: 100)
        #expect(unwatched.decide(.request(messages: 1), age: 20, messages: 40, watched: false) == .take)
        #expect(unwatched.decide(.request(messages: 1), age: 20, messages: 40, watched: true) == .commit)
        #expect(unwatched.decide(.request(messages: 1), age: 80, messages: 40, watched: false) == .commit)
        #expect(unwatched.decide(.request(messages: 61), age: 30, messages: 40, watched: false) == .commit)
        #expect(unwatched.decide(.nothing(idleNanoseconds: 0), age: 18, messages: 1, watched: false) == .wait(nanoseconds: 5))
        #expect(unwatched.decide(.nothing(idleNanoseconds: 4), age: 78, messages: 1, watched: false) == .wait(nanoseconds: 1))
        #expect(unwatched.decide(.nothing(idleNanoseconds: 2), age: 30, messages: 1, watched: true) == .commit)
        #expect(unwatched.decide(.nothing(idleNanoseconds: 5), age: 30, messages: 1, watched: false) == .commit)
        // A longer watched limit is never shortened by the unwatched one.
        let long = WriteLogBatching(maximumAgeNanoseconds: 100, unwatchedMaximumAgeNanoseconds: 80, idleNanoseconds: 500)
        #expect(long.decide(.request(messages: 1), age: 90, messages: 1, watched: false) == .take)
        // Records are written before the next request only for a free sync thread and enough of them.
        #expect(!batching.writesBeforeTaking(requests: 7, messages: 7, syncThreadFree: true))
        #expect(batching.writesBeforeTaking(requests: 8, messages: 8, syncThreadFree: true))
        #expect(batching.writesBeforeTaking(requests: 1, messages: 100, syncThreadFree: true))
        #expect(!batching.writesBeforeTaking(requests: 8, messages: 100, syncThreadFree: false))
        #expect(!batching.writesBeforeTaking(requests: 0, messages: 0, syncThreadFree: true))
    }
}
