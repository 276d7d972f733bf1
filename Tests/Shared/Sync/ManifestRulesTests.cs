using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Rbs.Shared.Sync;
using Rbs.V1;

namespace Rbs.Tests.Shared.Sync;

/// <summary>The two rules jbazel and the agent must agree on, or every sync fails: path order and manifest digest.</summary>
public sealed class ManifestRulesTests
{
    [Fact]
    public void Utf8OrdinalOrderIsCodePointOrder()
    {
        // UTF-16 ordinal puts U+1F600 (a surrogate pair, 0xD83D...) before U+FF21; UTF-8 bytes put it after.
        string[] paths = ["\uFF21", "\U0001F600", "a/b", "a-b", "a", "Z", "é"];
        var sorted = paths.Order(Utf8Ordinal.Instance).ToArray();
        var byBytes = paths.OrderBy(p => Convert.ToHexString(Encoding.UTF8.GetBytes(p)), StringComparer.Ordinal).ToArray();
        Assert.Equal(byBytes, sorted);
        Assert.Equal(["Z", "a", "a-b", "a/b", "é", "\uFF21", "\U0001F600"], sorted);
    }

    [Fact]
    public void DigestIsSha256OverEachEntryLengthDelimited()
    {
        // A short entry (1-byte length), one over 127 bytes (2-byte varint) and one larger than the reused buffer.
        ManifestEntry[] entries =
        [
            new() { Path = "a", Kind = EntryKind.Directory },
            new() { Path = "a/" + new string('x', 200), Kind = EntryKind.File, Size = 3, Digest = ByteString.CopyFrom(new byte[32]) },
            new() { Path = "b", Kind = EntryKind.Symlink, SymlinkTarget = new string('t', 5000) },
        ];

        using var reference = new MemoryStream();
        foreach (var entry in entries)
        {
            entry.WriteDelimitedTo(reference);
        }

        Assert.Equal(SHA256.HashData(reference.ToArray()), ManifestDigest.Compute(entries));

        // Entry by entry (the agent, as batches arrive) gives the same digest as all at once (jbazel).
        using var incremental = new ManifestDigest();
        foreach (var entry in entries)
        {
            incremental.Append(entry);
        }

        Assert.Equal(ManifestDigest.Compute(entries), incremental.Finish());
        Assert.Equal(SHA256.HashData([]), ManifestDigest.Compute([]));
    }
}
