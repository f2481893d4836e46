import Foundation
import KithAPI
import KithLMDB
import KithStoreLMDB

extension LMDBProfileStore: NodeStore {
    public var fileBytes: Int { environment.fileSize() }
    public var mapBytes: Int { environment.info().mapSize }
    public func usedBytes() throws -> Int { try tableBytes().values.reduce(0, +) }

    public func backup(into directory: String) throws -> Int { try backup(to: directory) }
}
