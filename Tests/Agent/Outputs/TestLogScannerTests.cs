using Rbs.Agent.Outputs;

namespace Rbs.Tests.Agent.Outputs;

public sealed class TestLogScannerTests
{
    // test.cache_status files written by Debian's bazel 4.2.3 for //lib:broken_test (FAILED) and //lib:greet_test
    // (PASSED) of the e2e example: serialized TestResultData.
    private const string RecordedFailed = "10001804228d012f726f6f742f2e63616368652f62617a656c2f5f62617a656c5f726f6f742f34386231363962356130396365616435383133306431613461616462633363382f65786563726f6f742f7262735f6578616d706c652f62617a656c2d6f75742f6b382d666173746275696c642f746573746c6f67732f6c69622f62726f6b656e5f746573742f746573742e6c6f6730004000488b10588b10608b1078bff4f6a1a334";
    private const string RecordedPassed = "100118013000400048a612528c012f726f6f742f2e63616368652f62617a656c2f5f62617a656c5f726f6f742f34386231363962356130396365616435383133306431613461616462633363382f65786563726f6f742f7262735f6578616d706c652f62617a656c2d6f75742f6b382d666173746275696c642f746573746c6f67732f6c69622f67726565745f746573742f746573742e6c6f6758a61260a61278b3d2f7a1a334";

    // status = FLAKY (2): passed on a retry; bazel moved the failed attempt to test_attempts/.
    private static readonly byte[] s_flaky = [0x10, 0x01, 0x18, 0x02];

    [Fact]
    public void RecordedStatusFilesReadAsFailedAndPassed()
    {
        Assert.Equal(4, TestLogScanner.Status(Convert.FromHexString(RecordedFailed)));
        Assert.Equal(1, TestLogScanner.Status(Convert.FromHexString(RecordedPassed)));
        Assert.Equal(0, TestLogScanner.Status([0xff, 0xff]));
    }

    [Fact]
    public void ListsTheLogsOfTestsThatDidNotPassInThisCommandOnly()
    {
        using var tree = new Tree();
        var since = DateTime.UtcNow.AddMinutes(-1);
        tree.Test("k8-fastbuild", "lib/broken_test", Convert.FromHexString(RecordedFailed), "//lib:broken_test");
        tree.Test("k8-fastbuild", "lib/greet_test", Convert.FromHexString(RecordedPassed), "//lib:greet_test");
        // Failed in an earlier command and not run in this one (a failure is never a cache hit): not this command's.
        var old = tree.Test("k8-fastbuild", "old/fail_test", Convert.FromHexString(RecordedFailed), "//old:fail_test");
        File.SetLastWriteTimeUtc(Path.Combine(old, "test.cache_status"), since.AddMinutes(-5));
        var flaky = tree.Test("k8-fastbuild", "app/flaky_test", s_flaky, "//app:flaky_test");
        Directory.CreateDirectory(Path.Combine(flaky, "test_attempts"));
        File.WriteAllText(Path.Combine(flaky, "test_attempts", "attempt_1.log"), "first try failed\n");
        File.WriteAllText(Path.Combine(flaky, "test_attempts", "attempt_1.xml"), "<testsuites/>\n");
        // Sharded: one directory per shard, one label; the label comes from the directory when test.log has none.
        tree.Test("k8-fastbuild", "lib/sharded_test/shard_1_of_2", Convert.FromHexString(RecordedFailed), label: null);
        tree.Test("k8-fastbuild", "lib/sharded_test/shard_2_of_2", Convert.FromHexString(RecordedFailed), label: null);
        tree.Test("k8-fastbuild", "external/dep/pkg/ext_test", Convert.FromHexString(RecordedFailed), label: null);
        // The same test failed in a second configuration: one path below testlogs, the first is kept.
        tree.Test("k8-opt", "lib/broken_test", Convert.FromHexString(RecordedFailed), "//lib:broken_test");

        var result = TestLogScanner.Scan(tree.Workspace, since, maxFiles: 100);

        Assert.Empty(result.Notes);
        Assert.Equal(
            [
                "testlogs/app/flaky_test/test.log", "testlogs/app/flaky_test/test.xml",
                "testlogs/app/flaky_test/test_attempts/attempt_1.log", "testlogs/app/flaky_test/test_attempts/attempt_1.xml",
                "testlogs/external/dep/pkg/ext_test/test.log", "testlogs/external/dep/pkg/ext_test/test.xml",
                "testlogs/lib/broken_test/test.log", "testlogs/lib/broken_test/test.xml",
                "testlogs/lib/sharded_test/shard_1_of_2/test.log", "testlogs/lib/sharded_test/shard_1_of_2/test.xml",
                "testlogs/lib/sharded_test/shard_2_of_2/test.log", "testlogs/lib/sharded_test/shard_2_of_2/test.xml",
            ],
            result.Logs.Select(log => log.RelativePath).Order(StringComparer.Ordinal));
        Assert.All(result.Logs, log => Assert.True(File.Exists(log.LocalPath), log.LocalPath));
        Assert.Equal(
            ["//app:flaky_test", "//lib:broken_test", "//lib:sharded_test", "@dep//pkg:ext_test"],
            result.Labels.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void WithoutABazelOutSymlinkItSaysWhy()
    {
        using var tree = new Tree();
        Directory.Delete(Path.Combine(tree.Workspace, "bazel-out"));

        var result = TestLogScanner.Scan(tree.Workspace, DateTime.UtcNow.AddMinutes(-1), maxFiles: 100);

        Assert.Empty(result.Logs);
        Assert.Contains(result.Notes, note => note.Contains("--symlink_prefix", StringComparison.Ordinal));
    }

    [Fact]
    public void AtMostMaxFilesAreListed()
    {
        using var tree = new Tree();
        for (var i = 0; i < 5; i++)
        {
            tree.Test("k8-fastbuild", $"lib/t{i}_test", Convert.FromHexString(RecordedFailed), $"//lib:t{i}_test");
        }

        var result = TestLogScanner.Scan(tree.Workspace, DateTime.UtcNow.AddMinutes(-1), maxFiles: 3);

        Assert.Equal(3, result.Logs.Count);
        Assert.Contains(result.Notes, note => note.Contains("first 3 test logs", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("lib/broken_test", "//lib:broken_test")]
    [InlineData("a/b/c_test/run_2_of_3", "//a/b:c_test")]
    [InlineData("top_test", "//:top_test")]
    [InlineData("lib/run_fast_test", "//lib:run_fast_test")]
    [InlineData("external/repo/x/y_test/shard_1_of_4", "@repo//x:y_test")]
    public void DirectoriesNameTheirTests(string path, string label) => Assert.Equal(label, TestLogScanner.DirectoryLabel(path));

    /// <summary>A workspace whose bazel-out symlink points into an output base, as bazel leaves it.</summary>
    private sealed class Tree : IDisposable
    {
        private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("rbs-testlogs-");

        public Tree()
        {
            Directory.CreateDirectory(Workspace);
            Directory.CreateDirectory(BazelOut);
            Directory.CreateSymbolicLink(Path.Combine(Workspace, "bazel-out"), BazelOut);
        }

        public string Workspace => Path.Combine(_root.FullName, "ws");

        private string BazelOut => Path.Combine(_root.FullName, "output_base", "execroot", "ws", "bazel-out");

        /// <summary>One test action's directory under testlogs: status file, test.log (with the runner's label line), test.xml.</summary>
        public string Test(string config, string path, byte[] status, string? label)
        {
            var directory = Path.Combine(BazelOut, config, "testlogs", path);
            Directory.CreateDirectory(directory);
            File.WriteAllText(Path.Combine(directory, "test.log"), label is null ? "no runner header\n" : $"exec ${{PAGER:-/usr/bin/less}} \"$0\" || exit 1\nExecuting tests from {label}\n---\n");
            File.WriteAllText(Path.Combine(directory, "test.xml"), "<testsuites/>\n");
            File.WriteAllBytes(Path.Combine(directory, "test.cache_status"), status);
            return directory;
        }

        public void Dispose() => _root.Delete(recursive: true);
    }
}
