using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Rbs.Agent.Outputs;

namespace Rbs.Tests.Agent.Outputs;

public sealed class BuildEventFileTests(ITestOutputHelper output)
{
    private static string Asset(string name) => Path.Combine(AppContext.BaseDirectory, "Agent", "Outputs", "Assets", name);

    [Fact]
    public void RealBazel423FileListsTheTopLevelOutputsOfEveryTarget()
    {
        // Recorded with Debian's bazel 4.2.3: `bazel build //app:all --build_event_json_file=...` on e2e/workspace as it
        // was before it became a C++ example (genrules only), plus an executable genrule (app:tool). It holds progress
        // events with kilobytes of sandbox stderr, too.
        var result = BuildEventFile.Read(Asset("recorded-bazel-4.2.3-genrules.bep.json"), maxFiles: 100);

        foreach (var note in result.Notes)
        {
            output.WriteLine($"note: {note}");
        }

        Assert.Equal(
            ["bazel-out/k8-fastbuild/bin/app/greeting.txt", "bazel-out/k8-fastbuild/bin/app/tool.sh", "bazel-out/k8-fastbuild/bin/app/report.txt", "bazel-out/k8-fastbuild/bin/app/noop.txt"],
            result.Outputs.Select(o => o.RelativePath));
        Assert.All(result.Outputs, o => Assert.EndsWith("/execroot/rbs_example/" + o.RelativePath, o.LocalPath, StringComparison.Ordinal));
        Assert.Empty(result.Notes);
    }

    [Fact]
    public void NestedAndSharedNamedSetsAreResolvedOnceAndCyclesEnd()
    {
        var result = Parse(
            """{"id":{"namedSet":{"id":"c"}},"namedSetOfFiles":{"files":[{"name":"c.txt","uri":"file:///x/execroot/ws/bazel-out/k8/bin/c.txt","pathPrefix":["bazel-out","k8","bin"]}],"fileSets":[{"id":"a"}]}}""",
            """{"id":{"namedSet":{"id":"b"}},"namedSetOfFiles":{"files":[{"name":"b.txt","uri":"file:///x/execroot/ws/bazel-out/k8/bin/b.txt","pathPrefix":["bazel-out","k8","bin"]}],"fileSets":[{"id":"c"}]}}""",
            """{"id":{"namedSet":{"id":"a"}},"namedSetOfFiles":{"files":[{"name":"a.txt","uri":"file:///x/execroot/ws/bazel-out/k8/bin/a.txt","pathPrefix":["bazel-out","k8","bin"]}],"fileSets":[{"id":"b"}]}}""",
            """{"id":{"targetCompleted":{"label":"//:one"}},"completed":{"success":true,"outputGroup":[{"name":"default","fileSets":[{"id":"a"}]},{"name":"extra","fileSets":[{"id":"c"}]}]}}""",
            """{"id":{"targetCompleted":{"label":"//:two"}},"completed":{"success":true,"outputGroup":[{"name":"default","fileSets":[{"id":"b"}]}]}}""");

        Assert.Equal(
            ["bazel-out/k8/bin/a.txt", "bazel-out/k8/bin/b.txt", "bazel-out/k8/bin/c.txt"],
            result.Outputs.Select(o => o.RelativePath));
        Assert.Equal("/x/execroot/ws/bazel-out/k8/bin/b.txt", result.Outputs[1].LocalPath);
    }

    [Fact]
    public void UnknownEventsMalformedLinesAndUnusableFilesAreSkipped()
    {
        var hugeProgress = """{"id":{"progress":{"opaqueCount":1}},"progress":{"stderr":" """ + new string('x', 3 * 1024 * 1024) + "\"}}";
        var result = Parse(
            """{"id":{"someFutureEvent":{"x":1}},"someFutureEvent":{"namedSetOfFiles":{"files":[]}}}""",
            hugeProgress,
            "this is not json",
            """{"id":{"namedSet":{"id":"0"}},"namedSetOfFiles":{"files":[""" +
                """{"name":"ok.txt","uri":"file:///out/execroot/ws/bazel-out/k8/bin/ok.txt","pathPrefix":["bazel-out","k8","bin"]},""" +
                """{"name":"remote.txt","uri":"bytestream://cache/blobs/abc/1","pathPrefix":["bazel-out","k8","bin"]},""" +
                """{"name":"../../escape.txt","uri":"file:///out/escape.txt","pathPrefix":["bazel-out","k8","bin"]},""" +
                """{"name":"noprefix/legacy.txt","uri":"file:///out/execroot/ws/bazel-out/k8/bin/noprefix/legacy.txt"},""" +
                """{"name":"src/source.txt","uri":"file:///home/me/ws/src/source.txt"},""" +
                """{"uri":"file:///nameless"}]}}""",
            """{"id":{"targetCompleted":{"label":"//:t"}},"completed":{"success":true,"outputGroup":[{"name":"default","fileSets":[{"id":"0"},{"id":"never-announced"}]}]}}""",
            """{"id":{"targetCompleted":{"label":"//:aborted"}},"aborted":{"reason":"SKIPPED"}}""",
            """{"id":{"namedSet":{"id":"unreferenced"}},"namedSetOfFiles":{"files":[{"name":"x","uri":"file:///x","pathPrefix":["bazel-out"]}]}}""");

        foreach (var note in result.Notes)
        {
            output.WriteLine($"note: {note}");
        }

        Assert.Equal(
            ["bazel-out/k8/bin/ok.txt", "bazel-out/k8/bin/noprefix/legacy.txt", "src/source.txt"],
            result.Outputs.Select(o => o.RelativePath));
        Assert.Contains(result.Notes, note => note.Contains("1 malformed", StringComparison.Ordinal));
        Assert.Contains(result.Notes, note => note.Contains("never announced", StringComparison.Ordinal));
        Assert.Contains(result.Notes, note => note.Contains("skipped 2 output(s)", StringComparison.Ordinal));
    }

    [Fact]
    public void TheFileCountIsBounded()
    {
        var lines = new List<string>();
        var sets = new StringBuilder();
        for (var i = 0; i < 50; i++)
        {
            lines.Add($$$"""{"id":{"namedSet":{"id":"{{{i}}}"}},"namedSetOfFiles":{"files":[{"name":"f{{{i}}}","uri":"file:///o/f{{{i}}}","pathPrefix":["bazel-out","k8","bin"]}]}}""");
            sets.Append(i == 0 ? "" : ",").Append($$$"""{"id":"{{{i}}}"}""");
        }

        lines.Add($$$"""{"id":{"targetCompleted":{"label":"//:t"}},"completed":{"outputGroup":[{"name":"default","fileSets":[{{{sets}}}]}]}}""");
        var result = Parse([.. lines], maxFiles: 10);

        Assert.Equal(10, result.Outputs.Count);
        Assert.Contains(result.Notes, note => note.Contains("first 10 outputs", StringComparison.Ordinal));
    }

    [Fact]
    public async Task TestLogCollectionAddsNoBuildEventFileAndRecordsTheLogsOfTestsThatDidNotPass()
    {
        var dir = Directory.CreateTempSubdirectory("rbs-outputs-testlogs-");
        try
        {
            var workspace = Directory.CreateDirectory(Path.Combine(dir.FullName, "ws")).FullName;
            var bazelOut = Path.Combine(dir.FullName, "execroot", "ws", "bazel-out");
            Directory.CreateSymbolicLink(Path.Combine(workspace, "bazel-out"), bazelOut);
            var store = new OutputStore();
            using var collector = new OutputCollector(store, NullLogger<OutputCollector>.Instance);
            var start = new Rbs.V1.StartCommand { CollectTestLogs = true, InvocationId = "inv" };
            // A startup option with its value as the next argument: the command is still found.
            start.Args.AddRange(["--output_user_root", "/tmp/root", "test", "//app:all"]);
            var collection = collector.Begin("inv", start, start.Args, workspace)!;
            // No --build_event_json_file: with one, bazel prints a line on stderr that local bazel does not.
            Assert.Equal(start.Args, collection.Arguments);

            // What bazel's test leaves: a failed test's status (BlazeTestStatus FAILED = 4) and logs, written after the start.
            var logs = Path.Combine(bazelOut, "k8-fastbuild", "testlogs", "app", "fail_test");
            Directory.CreateDirectory(logs);
            File.WriteAllText(Path.Combine(logs, "test.log"), "Executing tests from //app:fail_test\nfailing on purpose\n");
            File.WriteAllText(Path.Combine(logs, "test.xml"), "<testsuites/>\n");
            File.WriteAllBytes(Path.Combine(logs, "test.cache_status"), [0x10, 0x00, 0x18, 0x04]);

            await collection.CompleteAsync(3).WaitAsync(TimeSpan.FromSeconds(30));

            var recorded = store.Find("inv")!;
            Assert.Equal(["testlogs/app/fail_test/test.log", "testlogs/app/fail_test/test.xml"], recorded.Files!.Select(f => f.RelativePath));
            Assert.Equal(["//app:fail_test"], recorded.TestLabels);

            // A build is not a test: asking for test logs there records why nothing is listed.
            var build = new Rbs.V1.StartCommand { CollectTestLogs = true, InvocationId = "b" };
            build.Args.AddRange(["build", "//..."]);
            Assert.Null(collector.Begin("b", build, build.Args, workspace));
            Assert.Contains("'test' and 'coverage' commands only", store.Find("b")!.Note, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task CollectionRecordsExistingOutputsAndNotesMissingOnesThenDeletesTheEventFile()
    {
        var dir = Directory.CreateTempSubdirectory("rbs-outputs-collect-");
        try
        {
            var present = Path.Combine(dir.FullName, "execroot", "ws", "bazel-out", "k8", "bin", "present.txt");
            Directory.CreateDirectory(Path.GetDirectoryName(present)!);
            File.WriteAllText(present, "here");
            var missing = Path.Combine(Path.GetDirectoryName(present)!, "missing.txt");
            var store = new OutputStore();
            using var collector = new OutputCollector(store, NullLogger<OutputCollector>.Instance);
            var start = new Rbs.V1.StartCommand { CollectOutputs = true, InvocationId = "inv" };
            start.Args.AddRange(["--batch", "build", "//..."]);
            var collection = collector.Begin("inv", start, start.Args, "/nonexistent")!;
            var bep = collection.Arguments[2]["--build_event_json_file=".Length..];
            Assert.Equal(["--batch", "build", "--build_event_json_file=" + bep, "//..."], collection.Arguments);
            File.WriteAllLines(bep,
            [
                $$$"""{"id":{"namedSet":{"id":"0"}},"namedSetOfFiles":{"files":[{"name":"present.txt","uri":"file://{{{present}}}","pathPrefix":["bazel-out","k8","bin"]},{"name":"missing.txt","uri":"file://{{{missing}}}","pathPrefix":["bazel-out","k8","bin"]}]}}""",
                """{"id":{"targetCompleted":{"label":"//:t"}},"completed":{"success":true,"outputGroup":[{"name":"default","fileSets":[{"id":"0"}]}]}}""",
            ]);

            await collection.CompleteAsync(0).WaitAsync(TimeSpan.FromSeconds(30));

            var recorded = store.Find("inv")!;
            output.WriteLine($"note: {recorded.Note}");
            var file = Assert.Single(recorded.Files!);
            Assert.Equal("bazel-out/k8/bin/present.txt", file.RelativePath);
            Assert.Equal(4, file.Size);
            Assert.Contains("missing.txt", recorded.Note, StringComparison.Ordinal);
            Assert.False(File.Exists(bep), "the BEP file was not deleted");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void UnchangedOutputsAreNotHashedAgain()
    {
        var dir = Directory.CreateTempSubdirectory("rbs-outputs-cache-");
        try
        {
            var path = Path.Combine(dir.FullName, "out.bin");
            File.WriteAllBytes(path, Encoding.ASCII.GetBytes("first version"));
            var mtime = File.GetLastWriteTimeUtc(path);
            var buffer = new byte[OutputRecord.BlockSize];
            var first = OutputRecord.Create("out.bin", path, cached: null, buffer);

            // Same size and mtime, different bytes: the cache (path+size+mtime) answers, as for an untouched output.
            File.WriteAllBytes(path, Encoding.ASCII.GetBytes("other version"));
            File.SetLastWriteTimeUtc(path, mtime);
            var cached = OutputRecord.Create("out.bin", path, first, buffer);
            Assert.Same(first.Digest, cached.Digest);

            // A new mtime means rehashing.
            File.SetLastWriteTimeUtc(path, mtime.AddSeconds(5));
            var rehashed = OutputRecord.Create("out.bin", path, first, buffer);
            Assert.NotEqual(Convert.ToHexString(first.Digest), Convert.ToHexString(rehashed.Digest));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static BuildEventOutputs Parse(params string[] lines) => Parse(lines, maxFiles: 1000);

    private static BuildEventOutputs Parse(string[] lines, int maxFiles)
    {
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(string.Join('\n', lines) + "\n"));
        return BuildEventFile.Read(stream, maxFiles);
    }
}
