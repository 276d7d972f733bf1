using System.Text;
using System.Text.RegularExpressions;
using Google.Protobuf;

namespace Rbs.Agent.Outputs;

/// <summary>The test.log / test.xml files of the test actions that did not pass, and the labels they belong to.</summary>
internal sealed record FailedTestLogs(IReadOnlyList<BuildEventOutput> Logs, IReadOnlyList<string> Labels, IReadOnlyList<string> Notes);

/// <summary>
/// Finds the logs of the tests that did not pass in a <c>bazel test</c> that just ran, from what bazel leaves in its
/// testlogs tree, without a Build Event Protocol file: asking bazel for one makes it print
/// "INFO: Build Event Protocol files produced successfully." on stderr, which local bazel does not.
/// </summary>
/// <remarks>
/// <para>Every test action (one per test, shard and run) writes <c>test.cache_status</c> beside its <c>test.log</c>: a
/// serialized <c>TestResultData</c> whose field 3 is bazel's <c>BlazeTestStatus</c> (1 = PASSED, 2 = FLAKY, 3 = TIMEOUT,
/// 4 = FAILED, ...). A test that did not pass is never a cache hit, so it ran in this command and its status file is
/// newer than the command's start; a cached pass keeps its older file and is not looked at.</para>
/// <para>The testlogs tree is <c>bazel-out/&lt;config&gt;/testlogs</c> under the workspace's <c>bazel-out</c>
/// convenience symlink (a command with <c>--symlink_prefix</c> gets a note instead of logs). The label is the
/// <c>Executing tests from //pkg:name</c> line bazel's test runner writes at the top of test.log, or else the
/// directory (<c>pkg/name</c>). Bounded: at most <see cref="MaxEntries"/> directory entries are visited.</para>
/// </remarks>
internal static class TestLogScanner
{
    /// <summary>The most directory entries one scan visits.</summary>
    public const int MaxEntries = 500_000;

    private const string StatusFile = "test.cache_status";
    private const int BlazeTestStatusPassed = 1;
    private const int StatusFieldNumber = 3;
    private const int LabelProbeBytes = 4096;

    private static readonly byte[] s_labelMarker = "Executing tests from "u8.ToArray();

    private static readonly EnumerationOptions s_configs = new() { AttributesToSkip = FileAttributes.ReparsePoint, IgnoreInaccessible = true };
    private static readonly EnumerationOptions s_testlogs = new() { AttributesToSkip = FileAttributes.ReparsePoint, IgnoreInaccessible = true, RecurseSubdirectories = true };

    // bazel's directories for --test_sharding and --runs_per_test: testlogs/pkg/name/shard_1_of_2, .../run_1_of_3.
    private static readonly Regex s_shardOrRun = new("^(shard|run)_[0-9]+_of_[0-9]+$", RegexOptions.CultureInvariant);

    /// <param name="workspaceRoot">The directory bazel ran in (its workspace root: where <c>bazel-out</c> points from).</param>
    /// <param name="since">The command's start: older status files belong to earlier commands.</param>
    /// <param name="maxFiles">The most log files listed.</param>
    public static FailedTestLogs Scan(string workspaceRoot, DateTime since, int maxFiles)
    {
        var logs = new List<BuildEventOutput>();
        var labels = new List<string>();
        var notes = new List<string>();
        var bazelOut = Path.Combine(workspaceRoot, "bazel-out");
        if (!Directory.Exists(bazelOut))
        {
            notes.Add("the workspace has no bazel-out symlink (is --symlink_prefix set?), so the logs of failed tests were not found");
            return new FailedTestLogs(logs, labels, notes);
        }

        // The same test in two configurations lands on one path below jbazel-out/testlogs (as below bazel-testlogs,
        // which cannot tell them apart either): the first is kept.
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var visited = 0;
        foreach (var config in Directory.EnumerateDirectories(bazelOut, "*", s_configs))
        {
            var testlogs = Path.Combine(config, "testlogs");
            if (!Directory.Exists(testlogs))
            {
                continue;
            }

            foreach (var path in Directory.EnumerateFileSystemEntries(testlogs, "*", s_testlogs))
            {
                if (++visited > MaxEntries)
                {
                    notes.Add($"stopped looking for failed tests' logs after {MaxEntries} entries of bazel's testlogs");
                    return new FailedTestLogs(logs, labels, notes);
                }

                if (Path.GetFileName(path) != StatusFile || File.GetLastWriteTimeUtc(path) < since || Passed(path))
                {
                    continue;
                }

                var directory = Path.GetDirectoryName(path)!;
                var relativeDirectory = "testlogs/" + Path.GetRelativePath(testlogs, directory).Replace('\\', '/');
                var added = false;
                foreach (var (file, relative) in LogFiles(directory, relativeDirectory))
                {
                    if (logs.Count >= maxFiles)
                    {
                        notes.Add($"listed only the first {maxFiles} test logs");
                        return new FailedTestLogs(logs, labels, notes);
                    }

                    if (OutputPaths.IsSafeRelative(relative) && seen.Add(relative))
                    {
                        logs.Add(new BuildEventOutput(relative, file));
                        added = true;
                    }
                }

                if (added && Label(directory, relativeDirectory) is { } label && !labels.Contains(label))
                {
                    labels.Add(label);
                }
            }
        }

        return new FailedTestLogs(logs, labels, notes);
    }

    /// <summary>test.log and test.xml, and the failed attempts a retried test leaves in test_attempts/.</summary>
    private static IEnumerable<(string File, string Relative)> LogFiles(string directory, string relativeDirectory)
    {
        foreach (var name in (string[])["test.log", "test.xml"])
        {
            var file = Path.Combine(directory, name);
            if (File.Exists(file))
            {
                yield return (file, $"{relativeDirectory}/{name}");
            }
        }

        var attempts = Path.Combine(directory, "test_attempts");
        if (Directory.Exists(attempts))
        {
            foreach (var file in Directory.EnumerateFiles(attempts).Order(StringComparer.Ordinal))
            {
                if (Path.GetExtension(file) is ".log" or ".xml")
                {
                    yield return (file, $"{relativeDirectory}/test_attempts/{Path.GetFileName(file)}");
                }
            }
        }
    }

    /// <summary>Whether a test.cache_status says PASSED. An unreadable or unparsable one counts as not passed: its
    /// logs are worth fetching.</summary>
    internal static bool Passed(string statusFile)
    {
        try
        {
            var bytes = File.ReadAllBytes(statusFile);
            return Status(bytes) == BlazeTestStatusPassed;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Field 3 (BlazeTestStatus) of a serialized TestResultData; 0 (NO_STATUS) when absent or malformed.</summary>
    internal static int Status(byte[] bytes)
    {
        try
        {
            var input = new CodedInputStream(bytes);
            var status = 0;
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                if (WireFormat.GetTagFieldNumber(tag) == StatusFieldNumber && WireFormat.GetTagWireType(tag) == WireFormat.WireType.Varint)
                {
                    status = input.ReadEnum();
                }
                else
                {
                    input.SkipLastField();
                }
            }

            return status;
        }
        catch (InvalidProtocolBufferException)
        {
            return 0;
        }
    }

    /// <summary>The label from test.log's "Executing tests from //pkg:name" line, or from the directory.</summary>
    private static string? Label(string directory, string relativeDirectory)
    {
        try
        {
            using var log = File.OpenRead(Path.Combine(directory, "test.log"));
            var buffer = new byte[LabelProbeBytes];
            var read = log.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            var head = buffer.AsSpan(0, read);
            var at = head.IndexOf(s_labelMarker);
            if (at >= 0)
            {
                var rest = head[(at + s_labelMarker.Length)..];
                var end = rest.IndexOfAny((byte)'\n', (byte)'\r');
                if (end > 0)
                {
                    return Encoding.UTF8.GetString(rest[..end]);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }

        return DirectoryLabel(relativeDirectory["testlogs/".Length..]);
    }

    /// <summary><c>pkg/sub/name[/shard_1_of_2|/run_1_of_3]</c> → <c>//pkg/sub:name</c>; <c>external/repo/...</c> → <c>@repo//...</c>.</summary>
    internal static string? DirectoryLabel(string path)
    {
        var segments = path.Split('/').ToList();
        while (segments.Count > 1 && s_shardOrRun.IsMatch(segments[^1]))
        {
            segments.RemoveAt(segments.Count - 1);
        }

        var repository = "";
        if (segments.Count > 2 && segments[0] == "external")
        {
            repository = "@" + segments[1];
            segments.RemoveRange(0, 2);
        }

        return segments.Count == 0 ? null : $"{repository}//{string.Join('/', segments[..^1])}:{segments[^1]}";
    }
}
