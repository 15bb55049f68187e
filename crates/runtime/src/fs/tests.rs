use super::*;

fn ef(fid: u16, sfi: Option<u8>, body: EfBody) -> FileSpec {
    FileSpec {
        fid: Some(fid),
        sfi,
        lcs: LifeCycle::Activated,
        access: AccessRules::default(),
        kind: FileKind::Ef(body),
    }
}

fn df(fid: u16, name: Option<&[u8]>) -> FileSpec {
    FileSpec {
        fid: Some(fid),
        sfi: None,
        lcs: LifeCycle::Activated,
        access: AccessRules::default(),
        kind: FileKind::Df {
            name: name.map(<[u8]>::to_vec),
            children: Vec::new(),
        },
    }
}

fn sample() -> (FileSystem, FileId, FileId, FileId) {
    let mut fs = FileSystem::new();
    let mf = fs.mf();
    let app = fs.create(mf, df(0x5000, Some(b"\xF0virtcard"))).unwrap();
    let data = fs
        .create(
            app,
            ef(
                0x5001,
                Some(1),
                EfBody::Transparent {
                    data: vec![1, 2, 3],
                },
            ),
        )
        .unwrap();
    let recs = fs
        .create(
            app,
            ef(
                0x5002,
                Some(2),
                EfBody::Records {
                    kind: RecordKind::LinearFixed,
                    record_size: 2,
                    max_records: 3,
                    records: vec![vec![1, 2]],
                },
            ),
        )
        .unwrap();
    (fs, app, data, recs)
}

#[test]
fn lookups() {
    let (fs, app, data, recs) = sample();
    let mf = fs.mf();
    assert_eq!(fs.find_fid(mf, 0x5000), Some(app));
    assert_eq!(fs.find_fid(app, 0x3F00), Some(mf));
    assert_eq!(fs.find_fid(app, 0x5001), Some(data));
    assert_eq!(fs.walk(mf, &[0x50, 0x00, 0x50, 0x02]), Ok(recs));
    assert_eq!(fs.walk(mf, &[0x50, 0x00, 0x50]), Err(PathError::OddLength));
    assert_eq!(
        fs.walk(mf, &[0x50, 0x00, 0x50, 0x01, 0x00, 0x01]),
        Err(PathError::ThroughEf)
    );
    assert_eq!(fs.child_by_sfi(app, 2), Some(recs));
    assert_eq!(
        fs.find_by_name(b"\xF0virt", Occurrence::First, mf),
        Some(app)
    );
    assert_eq!(fs.find_by_name(b"\xF0virt", Occurrence::Next, app), None);
    assert!(fs.is_within(data, app));
}

#[test]
fn uniqueness_and_delete() {
    let (mut fs, app, data, _) = sample();
    let dup = ef(0x5001, None, EfBody::Transparent { data: vec![] });
    assert_eq!(fs.create(app, dup), Err(FsError::FidExists(0x5001)));
    let dup = ef(0x5009, Some(1), EfBody::Transparent { data: vec![] });
    assert_eq!(fs.create(app, dup), Err(FsError::SfiExists(1)));
    let mf = fs.mf();
    assert_eq!(
        fs.create(mf, df(0x6000, Some(b"\xF0virtcard"))),
        Err(FsError::NameExists(b"\xF0virtcard".to_vec()))
    );
    assert_eq!(fs.create(data, df(0x6000, None)), Err(FsError::NotADf));
    assert_eq!(fs.delete(mf), Err(FsError::DeleteMf));
    fs.delete(app).unwrap();
    assert!(!fs.contains(data));
    assert_eq!(fs.find_fid(mf, 0x5000), None);
    fs.validate().unwrap();
    // Identifiers are never reused.
    let again = fs.create(mf, df(0x5000, None)).unwrap();
    assert_ne!(again, app);
}

#[test]
fn fcp_round_trip() {
    let (mut fs, app, data, recs) = sample();
    let fcp = fs.fcp(data);
    assert_eq!(
        fcp,
        [
            0x62, 0x17, 0x80, 0x02, 0x00, 0x03, 0x82, 0x02, 0x41, 0x41, 0x83, 0x02, 0x50, 0x01,
            0x88, 0x01, 0x08, 0x8A, 0x01, 0x05, 0x86, 0x03, 0x00, 0x00, 0x00
        ]
    );
    let spec = parse_fcp(&fs.fcp(recs)).unwrap();
    assert_eq!(
        spec.kind,
        FileKind::Ef(EfBody::Records {
            kind: RecordKind::LinearFixed,
            record_size: 2,
            max_records: 1,
            records: vec![],
        })
    );
    assert_eq!((spec.fid, spec.sfi), (Some(0x5002), Some(2)));
    let spec = parse_fcp(&fs.fcp(app)).unwrap();
    assert!(matches!(spec.kind, FileKind::Df { name: Some(ref n), .. } if n == b"\xF0virtcard"));
    assert_eq!(fs.fci(app)[0], 0x6F);
    assert_eq!(fs.fmd(app), vec![0x64, 0x00]);
    // A created transparent EF is zero-filled to its size.
    let spec = parse_fcp(&[
        0x62, 0x0C, 0x80, 0x02, 0x00, 0x10, 0x82, 0x01, 0x01, 0x83, 0x02, 0x50, 0x09, 0x00,
    ])
    .unwrap();
    let id = fs.create(app, spec).unwrap();
    assert_eq!(fs.get(id).unwrap().ef().unwrap().size(), 16);
}

#[test]
fn fcp_errors() {
    assert_eq!(parse_fcp(&[0x62, 0x00]), Err(FcpError::MissingDescriptor));
    assert_eq!(parse_fcp(&[0x62, 0x05, 1]), Err(FcpError::Malformed));
    assert_eq!(parse_fcp(&[0x53, 0x00]), Err(FcpError::NotFcp));
    assert_eq!(
        parse_fcp(&[0x62, 0x03, 0x82, 0x01, 0x39]),
        Err(FcpError::BadDescriptor(0x39))
    );
    assert_eq!(
        parse_fcp(&[0x62, 0x03, 0x82, 0x01, 0x02]),
        Err(FcpError::MissingRecordSize)
    );
    assert_eq!(
        parse_fcp(&[0x62, 0x08, 0x80, 0x03, 0x10, 0x00, 0x00, 0x82, 0x01, 0x01]),
        Err(FcpError::TooLarge(0x10_0000))
    );
}

#[test]
fn serde_round_trip_and_validate() {
    let (mut fs, app, ..) = sample();
    fs.validate().unwrap();
    let json = serde_json::to_string(&fs).unwrap();
    let back: FileSystem = serde_json::from_str(&json).unwrap();
    assert_eq!(back, fs);
    back.validate().unwrap();
    // A child that disowns its parent is caught.
    if let Some(FileKind::Df { children, .. }) = fs.get_mut(app).map(|f| &mut f.kind) {
        children.clear();
    }
    assert!(matches!(fs.validate(), Err(FsError::Inconsistent(_))));
}

#[test]
fn lifecycle_bytes() {
    for lcs in [
        LifeCycle::Activated,
        LifeCycle::Deactivated,
        LifeCycle::Terminated,
    ] {
        assert_eq!(LifeCycle::from_byte(lcs.byte()), Some(lcs));
    }
    assert_eq!(LifeCycle::from_byte(0x07), Some(LifeCycle::Activated));
    assert_eq!(LifeCycle::from_byte(0x06), Some(LifeCycle::Deactivated));
    assert_eq!(LifeCycle::from_byte(0x02), None);
}

/// A chain of unnamed DFs without FID or SFI, each listing its child twice,
/// as a crafted state file could hold them; a named DF sits at the bottom.
fn doubled_chain(depth: usize) -> FileSystem {
    let mut fs = FileSystem::new();
    let mut at = fs.mf();
    let mut chain = Vec::new();
    for _ in 0..depth {
        let mut spec = df(0, None);
        spec.fid = None;
        at = fs.create(at, spec).unwrap();
        chain.push(at);
    }
    fs.create(at, df(0x5000, Some(b"\xF0deep"))).unwrap();
    for id in std::iter::once(fs.mf()).chain(chain[..depth - 1].iter().copied()) {
        if let Some(FileKind::Df { children, .. }) = fs.get_mut(id).map(|f| &mut f.kind) {
            let c = children[0];
            children.push(c);
        }
    }
    fs
}

#[test]
fn a_child_listed_twice_is_refused() {
    let fs = doubled_chain(48);
    let json = serde_json::to_string(&fs).unwrap();
    let back: FileSystem = serde_json::from_str(&json).unwrap();
    match back.validate() {
        Err(FsError::Inconsistent(m)) => assert!(m.contains("listed as a child twice"), "{m}"),
        other => panic!("accepted a repeated child: {other:?}"),
    }
    // Even unvalidated, a search by name stays linear in the file count
    // (2^48 visits otherwise).
    assert!(back.named_dfs().len() <= back.len());
    let _ = back.find_by_name(b"\xF0deep", Occurrence::First, back.mf());

    // A child claimed by a second DF is refused too.
    let (mut fs, app, data, _) = sample();
    let mut spec = df(0x6000, None);
    spec.fid = Some(0x6000);
    let other = fs.create(fs.mf(), spec).unwrap();
    if let Some(FileKind::Df { children, .. }) = fs.get_mut(other).map(|f| &mut f.kind) {
        children.push(data);
    }
    assert!(fs.get(app).unwrap().children().contains(&data));
    let back: FileSystem = serde_json::from_str(&serde_json::to_string(&fs).unwrap()).unwrap();
    assert!(matches!(back.validate(), Err(FsError::Inconsistent(_))));
}
